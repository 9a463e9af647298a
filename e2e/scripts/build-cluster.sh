#!/usr/bin/env bash
# Builds the e2e control-plane binary (k8s-e2e, which is also kubectl) and helm only when missing.
#
# Binaries are cached under ${DATASTREAM_CACHE:-$HOME/.cache/datastream}:
#   k8s-e2e/<key>/k8s-e2e  key = sha256 of e2e/cluster/{go.mod,go.sum,*.go but tests}, the Go version and the
#                          stamped Kubernetes version: any change to the module rebuilds, nothing else does.
#   helm/<version>-<go>/helm
# then linked (or copied) to e2e/.state/bin/{k8s-e2e,kubectl,helm}. Go's own module and build caches
# (GOMODCACHE, GOCACHE) make a rebuild after a small source change take about a minute; a brand-new
# machine downloads the modules and compiles everything (see e2e/README.md for measured times).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
src="$root/e2e/cluster"
bin="$root/e2e/.state/bin"
cache="${DATASTREAM_CACHE:-$HOME/.cache/datastream}"
helm_version="${HELM_VERSION:-v3.22.0}"
export GOTOOLCHAIN=local CGO_ENABLED=0
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

command -v go >/dev/null || { echo "build-cluster: Go is required (go 1.26+): https://go.dev/dl/" >&2; exit 1; }
go_version="$(go env GOVERSION)"
k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$src/go.mod")"
[[ "$k8s_version" =~ ^v([0-9]+)\.([0-9]+)\. ]] || { echo "build-cluster: cannot read the k8s.io/kubernetes version from $src/go.mod" >&2; exit 1; }
k8s_major="${BASH_REMATCH[1]}" k8s_minor="${BASH_REMATCH[2]}"

mkdir -p "$cache" "$bin"
# One build at a time per cache: concurrent CI jobs on a machine wait instead of both compiling.
exec 9>"$cache/.build.lock"
flock 9

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# place SRC DST: hard link when the cache is on the same filesystem, copy otherwise.
place() {
  rm -f "$2"
  ln "$1" "$2" 2>/dev/null || cp "$1" "$2"
}

# Version stamps for `kubectl version`, /version and Helm's kubeVersion checks. The upstream commit
# is not part of the module zip, so gitCommit is left empty rather than "$Format:%H$".
v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version
stamp=""
for p in $v $c; do
  stamp+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$k8s_major -X $p.gitMinor=$k8s_minor"
  stamp+=" -X $p.gitTreeState=clean -X $p.gitCommit="
done
key="$( { cd "$src"; cat go.mod go.sum; for f in $(ls ./*.go | grep -v "_test\.go$" | LC_ALL=C sort); do echo "$f"; cat "$f"; done
          echo "$go_version $k8s_version $stamp"; } | sha256sum | cut -c1-16)"
k8s_bin="$cache/k8s-e2e/$key/k8s-e2e"
if [[ -x "$k8s_bin" ]]; then
  echo "build-cluster: k8s-e2e $k8s_version cached ($k8s_bin)"
else
  echo "build-cluster: building k8s-e2e $k8s_version with $go_version (cold: 10-25 min on 2 cores) ..."
  t0="$(now)"
  (cd "$src" && go mod download)
  echo "build-cluster: modules ready in $(elapsed "$t0")"
  t1="$(now)"
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  stamp+=" -X $v.buildDate=$build_date -X $c.buildDate=$build_date"
  mkdir -p "$(dirname "$k8s_bin")"
  (cd "$src" && go build -p "${GO_BUILD_PARALLELISM:-2}" -trimpath -ldflags "-s -w $stamp" -o "$k8s_bin.tmp" .)
  mv "$k8s_bin.tmp" "$k8s_bin"
  # Older keys are dead weight (130 MB each); Go's build cache keeps rebuilds fast anyway.
  find "$cache/k8s-e2e" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  echo "build-cluster: k8s-e2e built in $(elapsed "$t1") ($(du -h "$k8s_bin" | cut -f1))"
fi
place "$k8s_bin" "$bin/k8s-e2e"
# k8s-e2e acts as kubectl when invoked through a link of that name.
ln -sfn k8s-e2e "$bin/kubectl"

helm_bin="$cache/helm/$helm_version-$go_version/helm"
if [[ -x "$helm_bin" ]]; then
  echo "build-cluster: helm $helm_version cached ($helm_bin)"
else
  echo "build-cluster: building helm $helm_version ..."
  t0="$(now)"
  # Module mode outside our go.mod: helm keeps its own k8s.io library versions.
  GOBIN="$(dirname "$helm_bin")" GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
    "helm.sh/helm/v3/cmd/helm@$helm_version"
  echo "build-cluster: helm built in $(elapsed "$t0")"
fi
place "$helm_bin" "$bin/helm"
echo "build-cluster: binaries in $bin: $(ls "$bin" | tr '\n' ' ')"
