# DataStream developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
CARGO ?= cargo
# The workspace's minimum supported Rust version, checked by `make lint`.
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

.PHONY: test lint unit conformance e2e build images demo demo-down crd cluster-up cluster-down
# Every test: formatting, lints, unit and integration tests, the conformance suites (h2spec, gRPC
# interop, HTTP/1.1 and WebSocket clients, directly and through the sidecar; see
# conformance/README.md), then the end-to-end suites on a real local control plane (needs root for
# network namespaces; see e2e/README.md).
test: lint unit conformance e2e

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# cargo-deny reads `cargo metadata` for every target platform; fetch their crates first so
	# that it can run offline (the advisory database cannot be fetched here, so that check is out).
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check licenses bans sources
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	# The workspace's rust-version (kube 5 needs 1.89, redb 1.90) really builds everything.
	CARGO_TARGET_DIR=target/msrv $(CARGO) +$(MSRV) check --workspace --all-targets --locked

unit:
	$(CARGO) test --workspace --exclude datastream-e2e

# Builds h2spec and grpc-go's interop programs from conformance/go.mod and the client libraries'
# venv from conformance/clients/requirements.txt (both cached), then fails on any case that passes
# without the sidecar and fails through it.
conformance:
	CARGO=$(CARGO) ./conformance/run.sh

e2e:
	./e2e/scripts/run-e2e.sh

# Regenerates the CRD YAML from the Rust types (a test fails when it is stale).
# The Helm chart ships a byte-identical copy (operator/tests/chart_crd.rs checks it).
crd:
	$(CARGO) run -q -p datastream-operator -- crd > crds/datastream.yaml
	cp crds/datastream.yaml charts/datastream/crds/datastream.yaml

build:
	$(CARGO) build --workspace

# The three release images as OCI layouts and oci-archives in target/images, without Docker
# (static binaries, umoci, reproducible digests; see docs/images.md).
images:
	./scripts/build-images.sh

demo:
	./scripts/demo.sh

demo-down:
	./e2e/scripts/cluster-down.sh

# Local e2e cluster (root; netns dse2e): see e2e/README.md.
cluster-up:
	./e2e/scripts/cluster-up.sh

cluster-down:
	./e2e/scripts/cluster-down.sh
