#!/usr/bin/env bash
# Installs Debian's nginx (package `nginx`) if its binary is missing. Used by the benchmark
# harness as the ceiling for media downloads from local disk: bench/run.py runs its own nginx in
# the foreground, with a generated config on a free loopback port (the package's default site and
# service are never used). Idempotent: does nothing when /usr/sbin/nginx is already there.
set -euo pipefail
if [[ -x /usr/sbin/nginx ]] || command -v nginx > /dev/null; then
    exit 0
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
    sudo=(sudo)
fi
apt_install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx > /dev/null
}
echo "setup-nginx: installing Debian's nginx" >&2
if ! apt_install; then
    "${sudo[@]}" apt-get update -q > /dev/null
    apt_install
fi
[[ -x /usr/sbin/nginx ]] || command -v nginx > /dev/null \
    || { echo "setup-nginx: nginx installed but its binary was not found" >&2; exit 1; }
