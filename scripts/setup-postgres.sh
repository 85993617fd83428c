#!/usr/bin/env bash
# Installs Debian's PostgreSQL server (package `postgresql`) if its binaries are missing. Used by
# the benchmark harness for the Synapse-on-PostgreSQL row; scripts/postgres-start.sh then runs a
# throwaway cluster of its own (the package's default cluster is never used). Idempotent: does
# nothing when initdb, pg_ctl and postgres are already there.
set -euo pipefail

have_pg() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && return 0
    done
    command -v initdb > /dev/null && command -v pg_ctl > /dev/null && command -v postgres > /dev/null
}

if have_pg && command -v psql > /dev/null; then
    exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
    sudo=(sudo)
fi
apt_install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql postgresql-client > /dev/null
}
echo "setup-postgres: installing Debian's postgresql" >&2
if ! apt_install; then
    "${sudo[@]}" apt-get update -q > /dev/null
    apt_install
fi
have_pg || { echo "setup-postgres: postgresql installed but initdb/pg_ctl not found" >&2; exit 1; }
