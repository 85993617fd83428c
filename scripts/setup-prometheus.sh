#!/usr/bin/env bash
# Prometheus (Debian's package) for the metrics test: a real server scraping moss's /metrics
# and answering PromQL. Only the binary is used (the test starts its own instance with its own
# config and data directory); the package's system service is not started. Installed with
# apt-get only when missing; idempotent. Prints the binary's path.
set -euo pipefail
bin=/usr/bin/prometheus
if [[ ! -x "$bin" ]]; then
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        sudo=(sudo)
    fi
    echo "setup-prometheus: installing prometheus with apt-get" >&2
    # policy-rc.d keeps the package's service from starting (containers have no init anyway).
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y --no-install-recommends prometheus >&2; then
        "${sudo[@]}" apt-get update >&2
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y --no-install-recommends prometheus >&2
    fi
    # The package may have started its service; the test runs its own.
    "${sudo[@]}" pkill -x prometheus 2>/dev/null || true
fi
echo "$bin"
