#!/usr/bin/env bash
# Creates the repo-local Python virtualenv (.venv) used by the client test suites and
# installs tests/clients/python/requirements.txt into it.
#
# Idempotent: the pip step is skipped when .venv/.requirements.sha256 matches the
# current requirements file, so CI and developers can call this before every run.
# Override the interpreter with PYTHON=/path/to/python3 (3.11+).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
requirements="$repo_root/tests/clients/python/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

if [[ ! -f "$requirements" ]]; then
    echo "setup-python: missing $requirements" >&2
    exit 1
fi

# A venv whose interpreter vanished (e.g. the base Python was upgraded) is useless:
# rebuild it rather than failing later with a confusing error.
if [[ -d "$venv" && ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
fi

if [[ ! -d "$venv" ]]; then
    "$python" -m venv "$venv"
fi

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"

if [[ "$want" != "$have" ]]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    # Written only after a successful install, so a failed install is retried next time.
    echo "$want" > "$stamp"
fi
