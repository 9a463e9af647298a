# DataStream developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint unit build demo crd
test: lint unit

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

build:
	$(CARGO) build --workspace

demo:
	./scripts/demo.sh
