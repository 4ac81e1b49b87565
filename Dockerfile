# syntax=docker/dockerfile:1
# canaryd and canaryctl in a distroless, non-root image (the runtime image of helm/canaryd).
#
#   docker build -t registry.example.com/canaryd:0.1.0 .
#   docker build --target canaryctl -t registry.example.com/canaryctl:0.1.0 .   # for CI jobs (has a shell)

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds; the binaries are copied out
# of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p canary-control --bins \
    && install -D -m 0755 target/release/canaryd /out/canaryd \
    && install -D -m 0755 target/release/canaryctl /out/canaryctl

# canaryctl for pipeline jobs: GitLab's and GitHub's runners need a shell in the job image.
FROM debian:bookworm-slim AS canaryctl
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/canaryctl /usr/local/bin/canaryctl
USER 65532:65532
CMD ["canaryctl", "--help"]

# The default target: glibc and libgcc only, no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/canaryd /out/canaryctl /usr/local/bin/
# The Deployment's preStop hook sleeps so MetalLB and kube-proxy stop sending before the
# drain; distroless has no sleep of its own (coreutils' needs only glibc).
COPY --from=builder /usr/bin/sleep /usr/bin/sleep
USER nonroot:nonroot
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/canaryd"]
CMD ["run", "--config", "/etc/canaryd/canaryd.yaml"]
