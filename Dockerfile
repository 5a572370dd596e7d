# syntax=docker/dockerfile:1
# default-deny-guard: the admission webhook's container image.
#
#   docker build -t default-deny-guard:0.1.0 .
#   docker run --rm -p 8443:8443 -p 9090:9090 default-deny-guard:0.1.0          # serve with a development certificate
#
# Two stages: the toolchain builds a release binary; the runtime image holds that one file and nothing else.

# --- build ---
# Pinned toolchain and Debian release: Rust 1.95 on bookworm (Debian 12, glibc 2.36). The runtime below is
# Debian 12 too, so the binary never needs a newer glibc than the one it runs on. Bump both together.
FROM rust:1.95-bookworm AS builder
WORKDIR /build
# The whole crate (see .dockerignore): Cargo.lock with --locked gives the exact dependency versions that were tested.
COPY . .
# BuildKit (the default builder since Docker 23) cache mounts keep the registry and the target directory between builds (dependencies compile once).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/default-deny-guard /out/default-deny-guard

# --- runtime ---
# distroless "cc", not "static": a Rust binary built for x86_64/aarch64-unknown-linux-gnu links glibc (libc, libm,
# libgcc_s for unwinding) dynamically, and "static" has no glibc. TLS is rustls with ring, so no OpenSSL is needed.
# (A musl build would run on "static"; the gnu build keeps glibc's faster allocator and needs no cross toolchain.)
# For production, pin the image by digest (gcr.io/distroless/cc-debian12:nonroot@sha256:...).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="default-deny-guard" \
      org.opencontainers.image.description="Kubernetes admission webhook that keeps default-deny NetworkPolicies where they belong" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/default-deny-guard /usr/local/bin/default-deny-guard
# Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd (65532 is distroless "nonroot").
USER 65532:65532
# Without --tls-cert/--tls-key, `serve` makes a development certificate under ./certs: the nonroot home is writable.
WORKDIR /home/nonroot
# serve: 8443 HTTPS webhook (/validate, /mutate, /healthz, /readyz), 9090 plain-HTTP /metrics.
# reconcile: 8081 plain-HTTP /healthz and /readyz, 9091 plain-HTTP /metrics.
EXPOSE 8443 9090 8081 9091
ENTRYPOINT ["/usr/local/bin/default-deny-guard"]
CMD ["serve"]
