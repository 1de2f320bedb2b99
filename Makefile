# loanflow: `make run` starts everything, `make test` checks everything.
CARGO ?= cargo
BIN := target/debug/loanflow

.PHONY: run test prepare build migrate lint fmt schema schema-check

## run: prepare the machine, migrate, start every service (Ctrl-C stops them all)
run: prepare build migrate
	@echo "==> starting loanflow (intake on http://127.0.0.1:8080/)"
	@$(BIN) all

## test: prepare the machine, then formatting, lints and every test
test: prepare lint
	$(CARGO) test --workspace --all-targets

prepare:
	@deploy/prepare.sh

build:
	$(CARGO) build --bin loanflow

migrate: build
	@$(BIN) migrate

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## schema: regenerate every src/schema.rs from the migrations (needs the diesel CLI)
schema:
	deploy/print-schema.sh

schema-check:
	deploy/print-schema.sh --check
