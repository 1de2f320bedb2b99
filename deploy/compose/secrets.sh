#!/usr/bin/env bash
# Prints a fresh .env for compose.yaml: a random password for the broker's
# administrator, every service's broker user, PostgreSQL's superuser and every
# service's database roles (owner and runtime). Run once:
#   deploy/compose/secrets.sh > deploy/compose/.env
set -euo pipefail
random() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
echo "LOANFLOW__BROKER__MANAGEMENT_USER=loanflow_admin"
echo "LOANFLOW__BROKER__MANAGEMENT_PASSWORD=$(random)"
for service in SETUP INTAKE LEDGER OPERATOR LEVEL_KYC LEVEL_CREDIT LEVEL_UNDERWRITING LEVEL_MANAGER; do
  echo "LOANFLOW__BROKER__PASSWORDS__${service}=$(random)"
done
echo "POSTGRES_PASSWORD=$(random)"
for service in INTAKE LEDGER LEVELS; do
  echo "LOANFLOW__${service}__DATABASE__PASSWORD=$(random)"
  echo "LOANFLOW__${service}__DATABASE__OWNER_PASSWORD=$(random)"
done
