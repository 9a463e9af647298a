# DataStream developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint unit build demo crd cluster-up cluster-down
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

# Local e2e cluster (root; netns dse2e): see e2e/README.md.
cluster-up:
	./e2e/scripts/cluster-up.sh

cluster-down:
	./e2e/scripts/cluster-down.sh
