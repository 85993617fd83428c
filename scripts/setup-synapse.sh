#!/usr/bin/env bash
# Installs Synapse from PyPI into .venv-synapse (its pinned dependencies would clash with the
# client test venv). Used by the import-synapse test and the benchmarks. Idempotent.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-synapse"
want="matrix-synapse==1.163.* aiohttp==3.14.5"
stamp="$venv/.installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want
echo "$want" > "$stamp"
