#!/usr/bin/env bash
# Fails the build when the registry mirror configuration is missing.
set -euo pipefail
test -f /etc/containerd/certs.d/registry.k8s.io/hosts.toml
