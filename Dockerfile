# syntax=docker/dockerfile:1
#
# The energy-agent image. The builder stage builds the agent with the project's own
# `cargo xtask build --release` (set-up: rust-src, bpf-linker against the nightly's own
# LLVM; then the workspace, the eBPF object embedded in the agent) and assembles the
# runtime tree with deploy/image/rootfs.sh: the binary, the libraries ldd lists, CA
# certificates, passwd/group and the binary's file capabilities. The runtime stage is
# that tree and nothing else. tests/tests/image.rs builds the same tree with the same
# script and runs the agent from it as the DaemonSet does (deploy/image/run-rootfs.sh).
#
#   docker build -t energy-agent .
#   docker run --rm --pid=host --cap-drop=ALL \
#       --cap-add=BPF --cap-add=PERFMON --cap-add=DAC_READ_SEARCH \
#       -v /sys/kernel/tracing:/sys/kernel/tracing:ro energy-agent check
#
# The image runs as `nonroot` (65532): it holds CAP_BPF, CAP_PERFMON and
# CAP_DAC_READ_SEARCH through the binary's file capabilities, which BuildKit (the
# default builder since Docker 23) and buildah keep on COPY. The container must be
# allowed those three (its bounding set), or execve fails with EPERM, and must not set
# no_new_privs (allowPrivilegeEscalation: false), under which file capabilities are
# not granted. Why each capability: docs/deploy.md.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
# The nightly that builds the eBPF programs (docs/TOOLCHAIN.md), installed pinned and
# linked under the name xtask and build.rs use.
ARG NIGHTLY=nightly-2026-05-19
# libcap2-bin (setcap) is left unpinned: Debian stable replaces a version with its
# security update, and a pinned one then no longer installs.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src \
 && rustup toolchain link nightly "$(rustup run "$NIGHTLY" rustc --print sysroot)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask build --release \
 && deploy/image/rootfs.sh target/release/energy-agent /rootfs

FROM scratch
LABEL org.opencontainers.image.title="energy-agent" \
      org.opencontainers.image.description="Joules and grams of CO2e per process, model, container and inference request" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/bin/energy-agent"]
CMD ["run"]
