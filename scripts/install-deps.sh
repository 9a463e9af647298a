#!/usr/bin/env bash
# Installs the Debian packages and toolchain components the build and tests need.
# Idempotent: every step checks before it installs, so warm machines pay nothing.
set -euo pipefail
need=()
for bin in ip:iproute2 nsenter:util-linux curl:curl; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin##*:}")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
