#!/usr/bin/env bash
# Run once by the postgres image on a new data directory: the loanflow database and each
# service's two roles (the owner that migrates, the runtime role it serves as), with
# the passwords of .env (every level shares the levels' passwords), as
# deploy/prepare.sh makes them on a developer's machine.
set -euo pipefail
sql() { psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -Atqc "$1"; }
sql "CREATE DATABASE loanflow"
sql "CREATE ROLE loanflow_services NOLOGIN"
role() { # role <name> <password>
  sql "CREATE ROLE $1 LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$2' IN ROLE loanflow_services"
}
pair() { # pair <runtime role> <password> <owner password>
  role "$1" "$2"
  role "$1_owner" "$3"
  sql "GRANT CONNECT, CREATE ON DATABASE loanflow TO $1_owner; GRANT CONNECT ON DATABASE loanflow TO $1"
}
pair loanflow_intake "$LOANFLOW__INTAKE__DATABASE__PASSWORD" "$LOANFLOW__INTAKE__DATABASE__OWNER_PASSWORD"
pair loanflow_ledger "$LOANFLOW__LEDGER__DATABASE__PASSWORD" "$LOANFLOW__LEDGER__DATABASE__OWNER_PASSWORD"
for level in kyc credit underwriting manager; do
  pair "loanflow_level_$level" "$LOANFLOW__LEVELS__DATABASE__PASSWORD" "$LOANFLOW__LEVELS__DATABASE__OWNER_PASSWORD"
done
