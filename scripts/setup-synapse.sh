#!/usr/bin/env bash
# Installs Synapse from PyPI into .venv-synapse (its pinned dependencies would clash with the
# client test venv). Used by the import-synapse test and the benchmarks. Idempotent.
#
# PostgreSQL driver (for the Synapse-on-PostgreSQL benchmark row): Synapse's `postgres` extra
# wants psycopg2, which builds from source (libpq-dev and a C compiler). psycopg2-binary installs
# the same `psycopg2` module from a prebuilt wheel that bundles libpq, and Synapse accepts it: it
# only imports `psycopg2`, and its dependency check (synapse/util/check_dependencies.py) only
# checks extras' packages that are installed under their own name. So: the wheel first; only if
# there is none for this platform, Debian's libpq-dev + gcc and a source build of psycopg2.
#
# Benchmark extras (bench/run.py): synapse-s3-storage-provider for the Synapse-on-S3 media row,
# installed with --no-deps because it declares a dependency on psycopg2 (the source build, for
# its s3_media_upload script only), which would clobber psycopg2-binary's files; its real
# runtime dependencies (boto3, humanize, tqdm) are pinned here instead. boto3 also puts the
# benchmark's reference object into Garage. matplotlib draws the plots.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-synapse"
base="matrix-synapse==1.163.* aiohttp==3.14.5"
pg_wheel="psycopg2-binary==2.9.*"
pg_source="psycopg2==2.9.*"
bench="boto3==1.44.8 humanize==4.17.0 tqdm==4.70.1 matplotlib==3.11.2"
s3_provider="synapse-s3-storage-provider==1.7.0"
want="$base $pg_wheel $bench $s3_provider"
stamp="$venv/.installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" $base

if ! "$venv/bin/python" -c 'import psycopg2' 2> /dev/null; then
    if ! "${pip[@]}" --only-binary=psycopg2-binary "$pg_wheel"; then
        echo "setup-synapse: no psycopg2-binary wheel here; building psycopg2 from source" >&2
        need=()
        command -v pg_config > /dev/null || need+=(libpq-dev)
        command -v cc > /dev/null || need+=(gcc)
        "$venv/bin/python" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
            || need+=(python3-dev)
        if (( ${#need[@]} )); then
            sudo=()
            [[ "$(id -u)" == 0 ]] || sudo=(sudo)
            apt_install() { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" > /dev/null; }
            apt_install || { "${sudo[@]}" apt-get update -q > /dev/null; apt_install; }
        fi
        "${pip[@]}" --no-binary=psycopg2 "$pg_source"
    fi
    "$venv/bin/python" -c 'import psycopg2'
fi
"${pip[@]}" $bench
"${pip[@]}" --no-deps "$s3_provider"
"$venv/bin/python" -c 'import psycopg2, boto3, matplotlib, s3_storage_provider'
echo "$want" > "$stamp"
