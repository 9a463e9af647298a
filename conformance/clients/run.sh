#!/usr/bin/env bash
# The clients suite: HTTP/1.1 and WebSocket client libraries written by others (requests, httpx,
# aiohttp, websockets, curl) against small backends, each case directly and through a
# datastream-sidecar (see test_clients.py and ../README.md). conformance/run.sh runs it as its
# third section, inside its private network namespace; on its own:
#
#   ./conformance/clients/run.sh                  # builds the binaries and the venv if needed, runs every case
#   ./conformance/clients/run.sh -k websockets    # extra arguments go to pytest
#
# It needs no root: everything listens on and talks to 127.0.0.1, on random ports.
# Exit status: 0 no regression, 1 regression(s), 2 setup error. The table goes to stdout; pytest's
# output, the results, the sidecars' logs and the reruns go to CLIENTS_OUT (default
# conformance/.out/clients), and the number of regressions to CLIENTS_OUT/regressions.
#
# Knobs (environment): CARGO, CLIENTS_NO_BUILD=1 (conformance/run.sh has built), CLIENTS_OUT,
# PYTHON and DATASTREAM_CACHE (for venv.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${CLIENTS_OUT:-$root/conformance/.out/clients}"
target="${CARGO_TARGET_DIR:-$root/target}/debug"

say() { echo "clients: $*"; }
die() { echo "clients: $*" >&2; exit 2; }

if [[ "${CLIENTS_NO_BUILD:-}" != 1 ]]; then
  timeout 3600 "${CARGO:-cargo}" build -p datastream-sidecar -p datastream-demo-replica || die "cargo build failed"
fi
[[ -x "$target/datastream-sidecar" ]] || die "no $target/datastream-sidecar"
# Offline once built: venv.sh only needs the package index when the venv for this key is missing.
venv="$(timeout 1000 "$here/venv.sh")" || die "no venv (venv.sh needs the package index the first time)"
command -v curl >/dev/null || die "needs curl"

rm -rf "$out"
mkdir -p "$out"
export DATASTREAM_SIDECAR="$target/datastream-sidecar" DATASTREAM_DEMO_REPLICA="$target/datastream-demo-replica"
export PYTHONDONTWRITEBYTECODE=1 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
cd "$here"

# pytest: 0 all passed, 1 some failed (data here), anything else is a setup error.
# Each case is bounded by pytest-timeout (pytest.ini); the whole run by timeout.
rc=0
CLIENTS_OUT="$out" CLIENTS_RESULTS="$out/results.json" timeout -k 10 300 "$venv/bin/python" -m pytest \
  --junitxml "$out/junit.xml" "$@" >"$out/pytest.txt" 2>&1 || rc=$?
if ((rc > 1)) || [[ ! -s "$out/results.json" ]]; then
  tail -n 30 "$out/pytest.txt" >&2
  die "pytest exited $rc without results (see $out/pytest.txt)"
fi
tail -n 1 "$out/pytest.txt" | sed 's/^=* */  pytest: /; s/ *=*$//'

# A sidecar failure that would count is run twice more, on its own (with fresh backends and
# sidecars); if either rerun passes it is shown as flaky and not counted.
reruns=()
n=0
while read -r id; do
  [[ -n "$id" ]] || continue
  n=$((n + 1))
  for i in 1 2; do
    f="$out/rerun-$n-$i"
    mkdir -p "$f"
    CLIENTS_OUT="$f" CLIENTS_RESULTS="$f/results.json" timeout -k 10 120 "$venv/bin/python" -m pytest "$id" \
      >"$f/pytest.txt" 2>&1 || true
    [[ -s "$f/results.json" ]] && reruns+=("$f/results.json")
  done
done < <("$venv/bin/python" "$here/report.py" candidates "$out/results.json")

"$venv/bin/python" "$here/report.py" table "$out/results.json" "${reruns[@]}" | tee "$out/table.txt"
regressions=$(awk '/^regressions / { print $2 }' "$out/table.txt")
[[ -n "$regressions" ]] || die "no verdict (see $out/table.txt)"
echo "$regressions" >"$out/regressions"
((regressions == 0)) || exit 1
