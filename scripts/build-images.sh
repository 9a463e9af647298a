#!/usr/bin/env bash
# Builds the release images without Docker (`make images`): static release binaries of the
# operator, the sidecar and the demo replica, each put into an empty base image with umoci.
#
#   scripts/build-images.sh [--out DIR] [--skip-cargo] [--test-images]
#
# Output (default target/images):
#   DIR/<image>/              an OCI image layout holding one manifest, tagged with the workspace
#                             version and `dev` (index.json's org.opencontainers.image.ref.name;
#                             the local cluster's manifests and examples use `dev`)
#   DIR/<image>.oci.tar       the same layout as an oci-archive (`skopeo copy oci-archive:...`)
#   DIR/digests               "<image>:<tag> sha256:<manifest digest>", one line per image
# --test-images also builds `datastream-e2e-busybox` from Debian's static busybox: the shell image
# the podlet's own tests run scripts in (never shipped).
#
# Reproducible: file mtimes, the image's `created` and its history are the commit's time
# (SOURCE_DATE_EPOCH, default `git log -1 --format=%ct`), ownership is 0:0 and modes are fixed, so
# the same commit gives the same digests (e2e/suite/tests/images.rs checks two builds). The file
# layout is the one images/*.Dockerfile produce (checked by the same test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

out=target/images
skip_cargo=0
test_images=0
while (($#)); do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --skip-cargo) skip_cargo=1; shift ;;
    --test-images) test_images=1; shift ;;
    *) echo "build-images: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in umoci tar; do
  command -v "$tool" >/dev/null || { echo "build-images: $tool is required (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
source_url="https://github.com/datastream-dev/datastream"
triple=x86_64-unknown-linux-gnu
bin_dir="target/$triple/release"

if [[ "$skip_cargo" == 0 ]]; then
  # crt-static with an explicit --target links glibc statically into the three binaries (and only
  # them: build scripts and proc macros stay dynamic). Remapping the checkout and cargo home keeps
  # machine paths out of panic messages and makes the binaries independent of where they were built.
  RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/src --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
    cargo build --release --locked --target "$triple" \
      -p datastream-operator -p datastream-sidecar -p datastream-demo-replica
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/build-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT
: > "$work/digests"

# start_layout LAYOUT TAG BUNDLE: an empty image in a fresh layout, unpacked into BUNDLE.
start_layout() {
  rm -rf "$1" "$1.oci.tar"
  umoci init --layout "$1"
  umoci new --image "$1:$2"
  umoci unpack --image "$1:$2" "$3" >/dev/null
}

# seal_layout LAYOUT TAG BUNDLE CONFIG-FLAG...: BUNDLE's rootfs as the image's one layer, with
# fixed ownership and mtimes, then the configuration, and unused blobs dropped.
seal_layout() {
  local layout="$1" tag="$2" bundle="$3"
  shift 3
  chown -R 0:0 "$bundle/rootfs"
  chmod 0755 "$bundle/rootfs"
  find "$bundle/rootfs" -exec touch -h -d "@$epoch" {} +
  umoci repack --image "$layout:$tag" --history.created "$created" \
    --history.created_by "scripts/build-images.sh" "$bundle"
  umoci config --image "$layout:$tag" --created "$created" --history.created "$created" \
    --history.created_by "scripts/build-images.sh" "$@"
}

# build_image NAME BINARY TAG DESCRIPTION PORT... : one layout, one layer.
build_image() {
  local name="$1" binary="$2" tag="$3" description="$4"
  shift 4
  local layout="$out/$name" bundle="$work/$name"
  [[ -x "$binary" ]] || { echo "build-images: $binary is missing (build without --skip-cargo)" >&2; exit 1; }
  if ldd "$binary" 2>&1 | grep '=>' >/dev/null; then
    echo "build-images: $binary is dynamically linked; an empty image cannot run it" >&2
    exit 1
  fi
  start_layout "$layout" "$tag" "$bundle"
  local rootfs="$bundle/rootfs"
  # The layout of images/*.Dockerfile's final stage: passwd/group naming UID/GID 65532 and the
  # binary in /usr/local/bin.
  install -d -m 0755 "$rootfs/etc" "$rootfs/usr" "$rootfs/usr/local" "$rootfs/usr/local/bin"
  printf 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > "$rootfs/etc/passwd"
  printf 'nonroot:x:65532:\n' > "$rootfs/etc/group"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
  install -m 0555 "$binary" "$rootfs/usr/local/bin/$(basename "$binary")"
  local config=(--config.user 65532:65532 --config.entrypoint "/usr/local/bin/$(basename "$binary")"
    --config.workingdir /
    --config.label "org.opencontainers.image.source=$source_url"
    --config.label "org.opencontainers.image.version=$version"
    --config.label "org.opencontainers.image.revision=$revision"
    --config.label "org.opencontainers.image.title=$name"
    --config.label "org.opencontainers.image.description=$description"
    --config.label "org.opencontainers.image.licenses=Apache-2.0")
  local port
  for port in "$@"; do config+=(--config.exposedports "$port/tcp"); done
  seal_layout "$layout" "$tag" "$bundle" "${config[@]}"
  umoci tag --image "$layout:$tag" dev
  umoci gc --layout "$layout"
  # The archive of the layout, itself reproducible.
  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --mode=go+rX,go-w \
    -C "$layout" -cf "$layout.oci.tar" .
  local digest
  digest="$(grep -o '"digest":"sha256:[0-9a-f]*"' "$layout/index.json" | head -n1 | cut -d'"' -f4)"
  echo "$name:$tag $digest" >> "$work/digests"
  echo "build-images: $name:$tag $digest"
}

build_image datastream-operator "$bin_dir/datastream-operator" "$version" \
  "DataStream operator: reconciles DataStream resources" 8080
build_image datastream-sidecar "$bin_dir/datastream-sidecar" "$version" \
  "DataStream sidecar: routes, balances and fails over traffic between replicas" 7080 7081 7082
build_image datastream-demo-replica "$bin_dir/datastream-demo-replica" "$version" \
  "DataStream demo replica: a small data service for demos and tests" 8080
if [[ "$test_images" == 1 ]]; then
  busybox=/bin/busybox
  [[ -x "$busybox" ]] || { echo "build-images: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
  # Not a product image: a shell for the podlet's tests. busybox applets are links to one binary.
  layout="$out/datastream-e2e-busybox" bundle="$work/busybox"
  start_layout "$layout" test "$bundle"
  install -d -m 0755 "$bundle/rootfs/bin" "$bundle/rootfs/etc" "$bundle/rootfs/tmp"
  install -m 0555 "$busybox" "$bundle/rootfs/bin/busybox"
  for applet in sh cat ls echo sleep env hostname id ip mkdir printf sed test true false wc grep head tail touch kill ps awk tr cut sort stat rm mv cp chmod ln dd seq whoami mount df; do
    ln -s busybox "$bundle/rootfs/bin/$applet"
  done
  chmod 1777 "$bundle/rootfs/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > "$bundle/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$bundle/rootfs/etc/group"
  seal_layout "$layout" test "$bundle" --config.entrypoint /bin/sh --config.env PATH=/bin
  umoci gc --layout "$layout"
  echo "build-images: datastream-e2e-busybox:test"
fi
mv "$work/digests" "$out/digests"
