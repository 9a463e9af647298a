#!/usr/bin/env bash
# Builds the conformance programs (h2spec, grpc-go's interop server and client) from the versions
# pinned in conformance/go.mod and go.sum, only when they are missing.
#
# Binaries are cached under ${DATASTREAM_CACHE:-$HOME/.cache/datastream}/conformance/<key>/, where
# key = sha256 of go.mod, go.sum, the Go version and the build recipe below: bumping a version (or
# Go) rebuilds, nothing else does. They are then linked (or copied) into conformance/.bin/.
# Same conventions as e2e/scripts/build-cluster.sh: GOTOOLCHAIN=local so that a go.mod can never
# make Go download another toolchain, CGO_ENABLED=0 so that no C toolchain is involved, and one
# build at a time per cache.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/.bin"
cache="${DATASTREAM_CACHE:-$HOME/.cache/datastream}"
export GOTOOLCHAIN=local CGO_ENABLED=0
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

command -v go >/dev/null || { echo "conformance/build: Go is required (go 1.26+): https://go.dev/dl/" >&2; exit 1; }
go_version="$(go env GOVERSION)"

# name=main package. The interop main packages live in the grpc module itself (interop/client and
# interop/server); their binaries get distinct names since both directories would build as
# "client"/"server".
tools=(
  "h2spec=github.com/summerwind/h2spec/cmd/h2spec"
  "grpc-interop-server=google.golang.org/grpc/interop/server"
  "grpc-interop-client=google.golang.org/grpc/interop/client"
)
ldflags="-s -w"

mkdir -p "$cache" "$bin"
# Concurrent runs (two CI jobs, or `make -j`) wait here instead of both compiling on 2 cores.
exec 9>"$cache/.build.lock"
flock 9

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# place SRC DST: hard link when the cache is on the same filesystem, copy otherwise.
place() {
  rm -f "$2"
  ln "$1" "$2" 2>/dev/null || cp "$1" "$2"
}

key="$( { cd "$here"; cat go.mod go.sum; echo "$go_version $ldflags ${tools[*]}"; } | sha256sum | cut -c1-16)"
dir="$cache/conformance/$key"
missing=()
for t in "${tools[@]}"; do
  [[ -x "$dir/${t%%=*}" ]] || missing+=("$t")
done

if ((${#missing[@]} == 0)); then
  echo "conformance/build: h2spec and grpc interop cached ($dir)"
else
  echo "conformance/build: building ${#missing[@]} tool(s) with $go_version (cold: a few minutes on 2 cores) ..."
  t0="$(now)"
  # -mod=readonly (the default) plus download up front: a go.sum that does not match fails here,
  # with a clear message, instead of in the middle of a compile.
  (cd "$here" && go mod download)
  echo "conformance/build: modules ready in $(elapsed "$t0")"
  mkdir -p "$dir"
  for t in "${missing[@]}"; do
    name="${t%%=*}" pkg="${t#*=}"
    t1="$(now)"
    # Built inside our module so the versions come from our go.sum; the shared Go build cache
    # means the second interop binary reuses the grpc packages compiled for the first.
    (cd "$here" && go build -p "${GO_BUILD_PARALLELISM:-2}" -trimpath -ldflags "$ldflags" -o "$dir/$name.tmp" "$pkg")
    mv "$dir/$name.tmp" "$dir/$name"
    echo "conformance/build: $name built in $(elapsed "$t1") ($(du -h "$dir/$name" | cut -f1))"
  done
  # Binaries of older keys are dead weight; Go's build cache keeps a rebuild fast anyway.
  find "$cache/conformance" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  echo "conformance/build: done in $(elapsed "$t0")"
fi

for t in "${tools[@]}"; do
  place "$dir/${t%%=*}" "$bin/${t%%=*}"
done
echo "conformance/build: binaries in $bin: $(cd "$bin" && echo *)"
