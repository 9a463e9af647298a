# syntax=docker/dockerfile:1.7
# Demo data service (HTTP 8080) and the helm test probe client.
# Static musl binary on an empty base image, running as a non-root user. Build from the
# repository root (docs/images.md):
#
#   docker build -f images/demo-replica.Dockerfile -t <registry>/datastream-demo-replica:<tag> .

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
    cargo build --release --locked -p datastream-demo-replica --bin datastream-demo-replica \
 && install -D -m 0555 target/release/datastream-demo-replica /out/datastream-demo-replica \
 && ! ldd /out/datastream-demo-replica 2>/dev/null | grep -q '=>'
# A passwd/group pair naming the non-root user (65532, as in distroless "nonroot").
RUN mkdir -p /out/etc \
 && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > /out/etc/passwd \
 && echo 'nonroot:x:65532:' > /out/etc/group

FROM scratch
COPY --from=build /out/etc/passwd /out/etc/group /etc/
COPY --from=build /out/datastream-demo-replica /usr/local/bin/datastream-demo-replica
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/datastream-demo-replica"]
