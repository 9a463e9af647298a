# syntax=docker/dockerfile:1.7
# Data-plane sidecar (traffic 7080, peer 7081, admin 7082).
# Static musl binary on an empty base image, running as a non-root user. Build from the
# repository root (docs/images.md):
#
#   docker build -f images/sidecar.Dockerfile -t <registry>/datastream-sidecar:<tag> .

ARG RUST_VERSION=1.95
ARG ALPINE_VERSION=3.22

FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build
# musl-dev and a C compiler for ring (TLS) and other crates with C parts; on Alpine the default
# target is musl, so the result is a static executable.
RUN apk add --no-cache musl-dev gcc make perl
WORKDIR /src
COPY . .
# Caches keep the registry and the target directory between builds; --locked builds exactly
# the versions in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p datastream-sidecar --bin datastream-sidecar \
 && install -D -m 0555 target/release/datastream-sidecar /out/datastream-sidecar \
 && ! ldd /out/datastream-sidecar 2>/dev/null | grep -q '=>'
# A passwd/group pair naming the non-root user (65532, as in distroless "nonroot").
RUN mkdir -p /out/etc \
 && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > /out/etc/passwd \
 && echo 'nonroot:x:65532:' > /out/etc/group

FROM scratch
COPY --from=build /out/etc/passwd /out/etc/group /etc/
COPY --from=build /out/datastream-sidecar /usr/local/bin/datastream-sidecar
USER 65532:65532
EXPOSE 7080 7081 7082
ENTRYPOINT ["/usr/local/bin/datastream-sidecar"]
