#!/usr/bin/env bash
# Regenerates each service's src/schema.rs from its migrations, with the Diesel CLI.
#
# The migrations run in the `public` schema of a scratch database so that the
# generated tables are unqualified: at run time every pool sets `search_path` to the
# service's own schema. With --check, it fails if a committed schema.rs differs.
set -euo pipefail
cd "$(dirname "$0")/.."
DIESEL=${DIESEL:-diesel}
PGURL=${LOANFLOW_SCHEMA_PG:-postgres://root@127.0.0.1:5432}
check=false
[ "${1:-}" = "--check" ] && check=true
status=0
for pair in intake:loanflow-intake ledger:loanflow-ledger level:loanflow-level; do
  service=${pair%%:*}; crate=${pair##*:}
  db="loanflow_schema_${service}_$$"
  psql "$PGURL/postgres" -qc "CREATE DATABASE $db" >/dev/null
  "$DIESEL" migration run --database-url "$PGURL/$db" --migration-dir "schema/$service" >/dev/null
  out=$(mktemp)
  "$DIESEL" print-schema --database-url "$PGURL/$db" > "$out"
  target="crates/$crate/src/schema.rs"
  if $check; then
    if ! diff -u "$target" "$out"; then echo "$target is out of date: run make schema" >&2; status=1; fi
  else
    cp "$out" "$target"; echo "wrote $target"
  fi
  rm -f "$out"
  psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
done
exit $status
