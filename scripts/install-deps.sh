#!/usr/bin/env bash
# Installs the Debian packages and toolchain components the build and tests need on a fresh
# machine. Idempotent: every step checks before it installs, so warm machines pay nothing.
set -euo pipefail
need=()
for bin in ip:iproute2 nsenter:util-linux unshare:util-linux flock:util-linux curl:curl faketime:faketime runc:runc umoci:umoci busybox:busybox-static; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin##*:}")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
# The toolchain of the workspace's rust-version, for `make lint`'s MSRV check.
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup toolchain list | grep "^$msrv" >/dev/null || rustup toolchain install "$msrv" --profile minimal
for component in clippy rustfmt; do
  rustup component list --installed 2>/dev/null | grep "^$component" >/dev/null || rustup component add "$component"
done
# cargo-deny (licenses, duplicate versions, sources: `make lint`), built once from crates.io and
# kept in ~/.cargo/bin; its build directory is cached beside the workspace's target dir.
deny_version=0.20.2
if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]]; then
  CARGO_TARGET_DIR="${DATASTREAM_CACHE:-$HOME/.cache/datastream}/cargo-deny" \
    cargo install --locked --quiet --version "$deny_version" cargo-deny
fi
command -v go >/dev/null || { echo "install-deps: Go 1.26+ is required to build the e2e control plane" >&2; exit 1; }
