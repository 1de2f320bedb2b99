#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target of crates/loanflow-domain/fuzz for RUNS
# executions (default 10 million), starting from the committed seeds, with libFuzzer and
# AddressSanitizer. Outside `make test` (it takes minutes per target). The stable
# toolchain runs it with RUSTC_BOOTSTRAP=1 (cargo fuzz needs nightly-only flags).
# A crash is saved under fuzz/artifacts/<target>/; fix it and keep it as a unit test.
set -euo pipefail
cd "$(dirname "$0")/../crates/loanflow-domain"
RUNS=${RUNS:-10000000}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in ${TARGETS:-http_body work_message status_message}; do
  mkdir -p "fuzz/corpus/$target"
  echo "==> $target: $RUNS executions"
  start=$(date +%s)
  cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -runs="$RUNS" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 12
  echo "==> $target: done in $(( $(date +%s) - start )) s"
done
