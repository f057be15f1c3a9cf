#!/usr/bin/env bash
# Points containerd at the pull-through registry proxy for the upstream registries.
set -euo pipefail
: "${CONTAINER_REGISTRY_URL:?set CONTAINER_REGISTRY_URL}"
for registry in docker.io ghcr.io quay.io registry.k8s.io; do
  dir="/etc/containerd/certs.d/${registry}"
  mkdir -p "${dir}"
  cat > "${dir}/hosts.toml" <<TOML
server = "https://${registry}"

[host."${CONTAINER_REGISTRY_URL}/v2/proxy-${registry}"]
  capabilities = ["pull", "resolve"]
  override_path = true
TOML
done
