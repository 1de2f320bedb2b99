#!/usr/bin/env bash
# Makes sure what loanflow needs on this machine is there and running:
# PostgreSQL and RabbitMQ (started if installed, installed with apt-get where we can),
# the RabbitMQ management plugin (tests create a vhost each through it), the libpq
# and OpenSSL headers the build links against, and the databases. Where it cannot act, it prints
# the exact command to run, and fails.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-root}
AMQP_PORT=${AMQP_PORT:-5672}
MGMT_PORT=${MGMT_PORT:-15672}

say() { printf '==> %s\n' "$*"; }
die() { printf 'loanflow: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO=none; fi
apt_updated=false
apt_install() {
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null; then
    die "please install: sudo apt-get install -y $*  (then run this again)"
  fi
  if ! $apt_updated; then $SUDO apt-get update -qq; apt_updated=true; fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() { # host port seconds what
  for _ in $(seq 1 "$3"); do port_open "$1" "$2" && return 0; sleep 1; done
  die "$4 did not start listening on $1:$2 within $3 s"
}

# --- build dependency: libpq (diesel links it)
if ! pkg-config --exists libpq 2>/dev/null && [ ! -e /usr/include/postgresql/libpq-fe.h ]; then
  apt_install libpq-dev pkg-config
fi
# --- build dependency: OpenSSL (TLS to the broker, `amqps://`)
if ! pkg-config --exists openssl 2>/dev/null; then
  apt_install libssl-dev pkg-config
fi

# --- PostgreSQL
if ! port_open "$PG_HOST" "$PG_PORT"; then
  if ! compgen -G "/etc/postgresql/*/main" >/dev/null; then apt_install postgresql; fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "starting PostgreSQL $version"
  [ "$SUDO" = none ] && die "PostgreSQL is stopped; run: sudo pg_ctlcluster $version main start"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || $SUDO pg_ctlcluster "$version" main start
  wait_port "$PG_HOST" "$PG_PORT" 30 PostgreSQL
fi
if ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  # A fresh install has no role for us and asks for passwords on TCP: set up the
  # contract's local development access (role root, trust on loopback).
  [ "$SUDO" = none ] && die "cannot log in to PostgreSQL as $PG_USER; run: sudo -u postgres createuser -s $PG_USER, and allow trust auth for 127.0.0.1 in pg_hba.conf"
  say "creating PostgreSQL role $PG_USER with trust on loopback"
  $SUDO su postgres -c "psql -qc \"DO \\\$\\\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN CREATE ROLE $PG_USER SUPERUSER LOGIN; END IF; END\\\$\\\$\""
  hba=$($SUDO su postgres -c "psql -Atqc 'show hba_file'")
  if ! $SUDO grep -q "loanflow" "$hba"; then
    $SUDO sed -i "1i host all $PG_USER 127.0.0.1/32 trust # loanflow local development\nhost all $PG_USER ::1/128 trust # loanflow local development" "$hba"
    $SUDO su postgres -c "psql -qc 'select pg_reload_conf()'" >/dev/null
  fi
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'select 1' >/dev/null || die "still cannot log in to PostgreSQL as $PG_USER"
fi
for db in loanflow loanflow_test; do
  if [ -z "$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc "select 1 from pg_database where datname = '$db'")" ]; then
    say "creating database $db"
    createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$db"
  fi
done

# --- Database roles: each service has an owner role (its migrations run as it; it owns
# the service's schemas) and a runtime role it serves as, with only the privileges its
# tables need (granted by `loanflow migrate`). Both log in with a password, even where
# pg_hba.conf trusts everyone else on loopback; the passwords are made here, once, and
# kept in libpq's password file (~/.pgpass, mode 600), never in the repository. A
# deployment sets them through its own secret store (see the README).
roles=(loanflow_intake loanflow_ledger loanflow_level_kyc loanflow_level_credit loanflow_level_underwriting loanflow_level_manager)
pgpass="$HOME/.pgpass"
touch "$pgpass" && chmod 600 "$pgpass"
sql() { PGOPTIONS="-c client_min_messages=warning" psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"; }
sql "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loanflow_services') THEN CREATE ROLE loanflow_services NOLOGIN; END IF; END\$\$"
for runtime in "${roles[@]}"; do
  for role in "${runtime}_owner" "$runtime"; do
    password=$(awk -F: -v r="$role" '$4 == r { print $5; exit }' "$pgpass")
    if [ -z "$password" ] || ! PGPASSWORD=$password psql -h "$PG_HOST" -p "$PG_PORT" -U "$role" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
      password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
      sql "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN CREATE ROLE $role LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END\$\$"
      sql "ALTER ROLE $role WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$password'"
      grep -v ":$role:" "$pgpass" > "$pgpass.new" || true
      printf '*:*:*:%s:%s\n' "$role" "$password" >> "$pgpass.new"
      mv "$pgpass.new" "$pgpass" && chmod 600 "$pgpass"
      say "database role $role: new password in $pgpass"
    fi
    sql "GRANT loanflow_services TO $role"
  done
  for db in loanflow loanflow_test; do
    sql "GRANT CONNECT, CREATE ON DATABASE $db TO ${runtime}_owner; GRANT CONNECT ON DATABASE $db TO $runtime"
  done
done
# A database migrated before the roles existed has its schemas owned by another role:
# hand each (with its tables) to its service's owner role, so migrations go on working.
psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d loanflow -v ON_ERROR_STOP=1 -Atq >/dev/null <<'SQL'
DO $$
DECLARE s record; t record;
BEGIN
  FOR s IN SELECT n.nspname, 'loanflow_' || n.nspname || '_owner' AS owner
           FROM pg_namespace n
           WHERE n.nspname IN ('intake', 'ledger', 'level_kyc', 'level_credit', 'level_underwriting', 'level_manager')
  LOOP
    IF pg_get_userbyid((SELECT nspowner FROM pg_namespace WHERE nspname = s.nspname)) <> s.owner THEN
      EXECUTE format('ALTER SCHEMA %I OWNER TO %I', s.nspname, s.owner);
      FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = s.nspname LOOP
        EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', s.nspname, t.tablename, s.owner);
      END LOOP;
    END IF;
  END LOOP;
END
$$;
SQL
# Passwords even on loopback, where the rest of this machine may trust: the services'
# roles (members of loanflow_services) never log in without one.
hba=$(sql 'show hba_file')
if [ -r "$hba" ] && ! grep -q '+loanflow_services' "$hba"; then
  [ "$SUDO" = none ] && [ ! -w "$hba" ] && die "add to the top of $hba: host all +loanflow_services 127.0.0.1/32 scram-sha-256 (and ::1/128, and local), then reload PostgreSQL"
  say "requiring passwords for loanflow's database roles ($hba)"
  $SUDO sed -i '1i local all +loanflow_services scram-sha-256 # loanflow: its roles log in with a password\nhost all +loanflow_services 127.0.0.1/32 scram-sha-256 # loanflow\nhost all +loanflow_services ::1/128 scram-sha-256 # loanflow' "$hba"
  sql 'select pg_reload_conf()' >/dev/null
fi

# --- pg_stat_statements: `make bench` reads statements per application from it. It
# must be preloaded, which takes one restart of the server; done once, where we may.
preload=$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'show shared_preload_libraries')
if [[ "$preload" != *pg_stat_statements* ]] && [ "$SUDO" != none ] && compgen -G "/etc/postgresql/*/main" >/dev/null; then
  say "preloading pg_stat_statements (restarts PostgreSQL once)"
  libs=${preload:+$preload,}pg_stat_statements
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "ALTER SYSTEM SET shared_preload_libraries = '$libs'"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main restart || $SUDO pg_ctlcluster "$version" main restart
  wait_port "$PG_HOST" "$PG_PORT" 30 PostgreSQL
  for _ in $(seq 1 30); do psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'select 1' >/dev/null 2>&1 && break; sleep 1; done
fi
if [[ "$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'show shared_preload_libraries')" == *pg_stat_statements* ]]; then
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d loanflow -qc 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null 2>&1 || true
fi

# --- RabbitMQ
if ! port_open 127.0.0.1 "$AMQP_PORT"; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  [ "$SUDO" = none ] && die "RabbitMQ is stopped; run: sudo rabbitmq-server -detached"
  say "starting RabbitMQ"
  $SUDO rabbitmq-server -detached
  wait_port 127.0.0.1 "$AMQP_PORT" 90 RabbitMQ
fi
if ! port_open 127.0.0.1 "$MGMT_PORT"; then
  [ "$SUDO" = none ] && die "run: sudo rabbitmq-plugins enable rabbitmq_management"
  say "enabling the RabbitMQ management plugin"
  $SUDO rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_port 127.0.0.1 "$MGMT_PORT" 60 "RabbitMQ management"
fi
# --- Broker users: every service connects as a user of its own (`loanflow migrate`
# creates them, with their permissions, through the management API). Their passwords
# are made here, once, and kept outside the repository, in a file `make run` reads into
# the environment (LOANFLOW__BROKER__PASSWORDS__<SERVICE>).
credentials="${LOANFLOW_CREDENTIALS:-$HOME/.config/loanflow/broker.env}"
if [ ! -s "$credentials" ]; then
  mkdir -p "$(dirname "$credentials")"
  (umask 077
   for service in setup intake ledger operator level_kyc level_credit level_underwriting level_manager; do
     printf 'export LOANFLOW__BROKER__PASSWORDS__%s=%s\n' "${service^^}" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
   done > "$credentials")
  say "broker users' passwords made: $credentials"
fi

# --- browser tests: Debian's Chromium, Node.js, and playwright-core (which drives the
# system's Chromium and downloads no browser of its own)
if [ "${LOANFLOW_SKIP_BROWSER:-}" != 1 ]; then
  command -v chromium >/dev/null || apt_install chromium
  command -v node >/dev/null || apt_install nodejs npm
  browser_tests="$(dirname "$0")/../crates/loanflow/tests/browser"
  if [ ! -d "$browser_tests/node_modules/playwright-core" ] || [ ! -d "$browser_tests/node_modules/@asyncapi/parser" ]; then
    say "installing the browser tests' dependencies"
    (cd "$browser_tests" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
# --- the Python checks (the API description, the deployment files), pinned, in a
# virtual environment of the build's own (target/ is never committed)
if [ "${LOANFLOW_SKIP_BROWSER:-}" != 1 ]; then
  tools="$(dirname "$0")/../target/tools/py"
  requirements="$(dirname "$0")/test-tools.txt"
  missing=$(grep -v '^#' "$requirements" | grep -vxFf <("$tools/bin/pip" freeze 2>/dev/null) || true)
  if [ -n "$missing" ]; then
    say "installing the test tools of deploy/test-tools.txt"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  fi
fi
say "PostgreSQL and RabbitMQ are up"
