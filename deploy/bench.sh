#!/usr/bin/env bash
# `make bench`: starts the system as `make run` does (release build, one process per
# service, so each one's memory can be measured), in a vhost and schemas of its own
# (it never touches a running `make run`), and beside it the synchronous twin in
# processes of its own (`loanflow twin …`, behind a secret made for this run); runs the
# benchmark client (`loanflow-bench`), and stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
LOANFLOW_SKIP_BROWSER=1 deploy/prepare.sh
cargo build --release --bin loanflow --bin loanflow-bench
BIN=target/release/loanflow
VHOST=loanflow-bench
API=http://127.0.0.1:15672/api
AUTH=guest:guest

curl -fsS -u $AUTH -X DELETE "$API/vhosts/$VHOST" >/dev/null 2>&1 || true
psql -h 127.0.0.1 -U root -d loanflow -qc \
  "DROP SCHEMA IF EXISTS bench_intake, bench_twin_intake, bench_twin_ledger, bench_ledger, bench_level_kyc, bench_level_credit, bench_level_underwriting, bench_level_manager CASCADE" >/dev/null

export LOANFLOW_CONFIG_DIR=/nonexistent
# The services connect as broker users of the bench's own (prefix bench_), with the
# machine's passwords (deploy/prepare.sh); `loanflow migrate` creates them.
# shellcheck disable=SC1090
. "${LOANFLOW_CREDENTIALS:-$HOME/.config/loanflow/broker.env}"
export LOANFLOW__BROKER__URL="amqp://127.0.0.1:5672/$VHOST"
export LOANFLOW__BROKER__USER_PREFIX=bench_
export LOANFLOW__INTAKE__DATABASE__SCHEMA=bench_intake
export LOANFLOW__LEDGER__DATABASE__SCHEMA=bench_ledger
export LOANFLOW__LEVELS__DATABASE__SCHEMA=bench_level_
export LOANFLOW__INTAKE__LISTEN=127.0.0.1:18080
export LOANFLOW__BUREAU__LISTEN=127.0.0.1:18090
export LOANFLOW__LEVELS__BUREAU_URL=http://127.0.0.1:18090
export LOANFLOW__TELEMETRY__FILTER=warn
# A benchmark submits from one address far above the per-client limit.
export LOANFLOW__INTAKE__LIMITS__SUBMISSIONS_PER_SECOND=0
$BIN migrate >/dev/null
# The bench client itself (the bare chain, queue inspection) is the harness: guest.
curl -fsS -u $AUTH -X PUT -H 'content-type: application/json' \
  -d '{"configure":".*","write":".*","read":".*"}' "$API/permissions/$VHOST/guest" >/dev/null

pids=()
args=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  curl -fsS -u $AUTH -X DELETE "$API/vhosts/$VHOST" >/dev/null 2>&1 || true
  for user in setup intake ledger operator level_kyc level_credit level_underwriting level_manager; do
    curl -fsS -u $AUTH -X DELETE "$API/users/bench_$user" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
start() { # name, then the subcommand
  local name=$1; shift
  $BIN "$@" > "target/bench-$name.log" 2>&1 &
  pids+=($!)
  args+=(--pid "$name=$!")
}
wait_ready() {
  for _ in $(seq 1 60); do curl -fsS "$1/health/ready" >/dev/null 2>&1 && return 0; sleep 0.5; done
  curl -fsS "$1/health/ready" >/dev/null
}
# INSTANCES (default 1) of each level and of the ledger, sharing their queues: the
# first of each is measured for its stage timings and frozen in the outage runs.
INSTANCES=${INSTANCES:-1}
start bureau bureau
for n in $(seq 1 "$INSTANCES"); do
  suffix=$([ "$n" = 1 ] || echo "-$n")
  LOANFLOW__LEDGER__HEALTH_LISTEN=127.0.0.1:$((18110 + (n - 1) * 20)) start "ledger$suffix" ledger
  port=$((18101 + (n - 1) * 20))
  for level in kyc credit underwriting manager; do
    LOANFLOW__LEVELS__HEALTH_LISTEN=127.0.0.1:$port start "level-$level$suffix" level $level
    port=$((port + 1))
  done
done
start intake intake
# The synchronous twin, in processes of its own: twin levels and a twin ledger (its own
# schema) answering over HTTP, and a twin intake calling them in turn.
LOANFLOW__TWIN__SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export LOANFLOW__TWIN__SECRET
export LOANFLOW__TWIN__LEDGER_URL=http://127.0.0.1:18210
port=18201
for level in kyc credit underwriting manager; do
  LOANFLOW__TWIN__LISTEN=127.0.0.1:$port start "twin-level-$level" twin level $level
  export "LOANFLOW__TWIN__LEVEL_URLS__${level^^}=http://127.0.0.1:$port"
  port=$((port + 1))
done
LOANFLOW__TWIN__LISTEN=127.0.0.1:18210 LOANFLOW__LEDGER__DATABASE__SCHEMA=bench_twin_ledger \
  start twin-ledger twin ledger
LOANFLOW__INTAKE__LISTEN=127.0.0.1:18081 LOANFLOW__INTAKE__DATABASE__SCHEMA=bench_twin_intake \
  start twin-intake twin intake
wait_ready http://127.0.0.1:18080
wait_ready http://127.0.0.1:18081

metrics=(--metrics intake=http://127.0.0.1:18080 --metrics ledger=http://127.0.0.1:18110)
port=18101
for level in kyc credit underwriting manager; do metrics+=(--metrics "$level=http://127.0.0.1:$port"); port=$((port + 1)); done

target/release/loanflow-bench --instances "$INSTANCES" "${metrics[@]}" --url http://127.0.0.1:18080 --sync-url http://127.0.0.1:18081 --amqp "amqp://guest:guest@127.0.0.1:5672/$VHOST" "${args[@]}" "$@"
