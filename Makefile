# loanflow: `make run` starts everything, `make test` checks everything.
CARGO ?= cargo
# `make run` is how a new user first judges the system's speed: an optimised build.
# (`make test` builds its own, in debug.)
BIN := target/release/loanflow
# The broker users' passwords, made by deploy/prepare.sh outside the repository.
CREDENTIALS ?= $(HOME)/.config/loanflow/broker.env

.PHONY: run test prepare build migrate lint fmt schema schema-check asyncapi cluster-test screenshots simulate bench fuzz

## run: prepare the machine, migrate, start every service (Ctrl-C stops them all)
run: export LOANFLOW_SKIP_BROWSER = 1
run: prepare build migrate
	@echo "==> starting loanflow (intake on http://127.0.0.1:8080/)"
	@. $(CREDENTIALS) && exec $(BIN) --development all

## test: prepare the machine, then formatting, lints, the generated schemas and every test
test: prepare lint schema-check
	$(CARGO) test --workspace --all-targets

prepare:
	@deploy/prepare.sh

build:
	$(CARGO) build --release --bin loanflow

## migrate: the broker's vhost, users, permissions and topology, then every schema
migrate: build
	@. $(CREDENTIALS) && $(BIN) migrate

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: the benchmark (release build, own vhost and schemas); appends to docs/bench-results.md
bench:
	deploy/bench.sh

## fuzz: every fuzz target for RUNS executions (default 10 million); outside `make test`
fuzz:
	deploy/fuzz.sh

## simulate: rehearse a scenario against the system `make run` started (SCENARIO=smoke)
SCENARIO ?= smoke
simulate: build
	$(BIN) simulate examples/$(SCENARIO).toml

## schema: regenerate every src/schema.rs from the migrations (needs the diesel CLI)
schema:
	deploy/print-schema.sh

## cluster-test: the system against a three-node RabbitMQ cluster on this machine, one node lost and restarted
cluster-test: prepare
	$(CARGO) test --test cluster -- --nocapture

## asyncapi: regenerate schema/asyncapi.json (the broker's channels and messages) from the code
asyncapi:
	$(CARGO) run --quiet --bin loanflow -- --config /nonexistent asyncapi > schema/asyncapi.json

## schema-check: every src/schema.rs matches what its migrations generate
schema-check:
	@command -v diesel >/dev/null || $(CARGO) install diesel_cli --no-default-features --features postgres --locked
	deploy/print-schema.sh --check

## screenshots: refresh the README's screenshots from the browser tests' latest run
screenshots:
	mkdir -p docs/screenshots
	cp target/screenshots/form.png target/screenshots/status.png target/screenshots/inbox.png target/screenshots/form-errors.png target/screenshots/phone.png docs/screenshots/
