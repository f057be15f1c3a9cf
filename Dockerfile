# The image kiln's tasks run in on Argo Workflows, Tekton and GitHub Actions (`kiln export`):
#   docker build -t kiln:0.1.0 .
# kiln (its step supervisor is built into it) on a slim Debian, with what the builders and the tasks shell out to.

FROM rust:1.89-slim-bookworm AS builder
WORKDIR /src
COPY . .
# `kiln --version` names the commit given with --build-arg KILN_COMMIT=… (there is no .git).
ARG KILN_COMMIT
RUN cargo build --release --locked --bin kiln

FROM debian:bookworm-slim AS runtime
# e2fsprogs, qemu-utils: the local builder; make, python3, curl, unzip, openssh-client:
# image-builder's make targets (which fetch packer and ansible); git: the tasks' checkout;
# jq: the GitHub workflow's plan job; ca-certificates: the clouds' APIs and the remote cache.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl e2fsprogs git jq make openssh-client python3 python3-pip \
        python3-venv qemu-utils unzip \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/kiln /usr/local/bin/
WORKDIR /src
ENTRYPOINT ["kiln"]
