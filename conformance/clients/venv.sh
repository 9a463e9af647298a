#!/usr/bin/env bash
# Makes (once) and prints the path of the virtualenv that the clients suite runs in:
#   ${DATASTREAM_CACHE:-~/.cache/datastream}/conformance-venv/<key>
# where <key> is the sha256 of requirements.txt and of the interpreter's version (and machine), so
# a changed pin or a new Python makes a new venv and an unchanged one is reused as is. The venv is
# built in place under a lock and marked complete last; a venv without the mark (an interrupted
# build) is removed and built again. Needs the package index (PyPI) only when it builds, which is
# why conformance/run.sh calls it before it enters its private network namespace.
#
# Knobs (environment): PYTHON (default python3), DATASTREAM_CACHE, PIP_INDEX_URL & co. (pip's own).
# stdout: the venv's directory (its interpreter is bin/python); everything else goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
cache="${DATASTREAM_CACHE:-$HOME/.cache/datastream}/conformance-venv"

say() { echo "clients venv: $*" >&2; }

pyver="$("$python" -c 'import platform, sys
print(sys.implementation.name, platform.python_version(), platform.machine(), sys.abiflags)')" \
  || { say "no usable $python"; exit 2; }
key="$( { sha256sum <"$here/requirements.txt"; echo "$pyver"; } | sha256sum | cut -c1-16)"
dir="$cache/$key"

mkdir -p "$cache"
exec 9>"$cache/.lock"
timeout 900 flock 9 || { say "timed out waiting for the lock on $cache/.lock"; exit 2; }

if [[ -f "$dir/.complete" ]]; then
  echo "$dir"
  exit 0
fi

say "building $dir ($pyver)"
start=$(date +%s.%N)
rm -rf "$dir"
"$python" -m venv "$dir" >&2
pip=("$dir/bin/python" -m pip --disable-pip-version-check --no-input --require-virtualenv)
# The closure is pinned in requirements.txt: --no-deps installs exactly that, and `pip check` fails
# if a pinned package needs something the file lacks. Wheels only: no compiler, and the same files
# on every machine of this platform.
timeout 900 "${pip[@]}" install --quiet --no-deps --only-binary=:all: -r "$here/requirements.txt" >&2
"${pip[@]}" check >&2
cp "$here/requirements.txt" "$dir/requirements.txt"
echo "$pyver" >"$dir/.complete"
say "built in $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }')"
echo "$dir"
