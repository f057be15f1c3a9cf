#!/usr/bin/env bash
# Installs the extra tools every node image carries.
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends jq htop
