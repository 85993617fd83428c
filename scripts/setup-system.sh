#!/usr/bin/env bash
# System tools the tests call: openssl (self-signed certificates for the federation tests and the
# Synapse fixture), systemd-analyze (verifies deploy/systemd/moss.service) and tar (reads the
# backup archive). Installed with apt-get only when missing; idempotent.
set -euo pipefail
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v tar >/dev/null 2>&1 || missing+=(tar)
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi
echo "setup-system: installing ${missing[*]} with apt-get"
if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; then
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
