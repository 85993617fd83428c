#!/usr/bin/env bash
# Installs schemathesis from PyPI into .venv-schemathesis, for the API fuzzer in
# tests/schemathesis/run.py (its own venv: schemathesis pins hypothesis, requests and friends,
# which would clash with the client test venv). The versions, schemathesis 4.32.5 and its whole
# dependency closure, are pinned in tests/schemathesis/requirements.txt, so a seed generates the
# same requests everywhere. Everything the fuzzer needs at run time (the spec included,
# tests/schemathesis/client-server-v1.18.json) is then local: it runs offline.
#
# Idempotent: the pip step is skipped when .venv-schemathesis/.requirements.sha256 matches the
# requirements file. The venv holds a `.gitignore` of `*`, so git ignores it without an entry in
# the repo's .gitignore. Override the interpreter with PYTHON=/path/to/python3 (3.11+).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-schemathesis"
requirements="$repo_root/tests/schemathesis/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

if [[ ! -f "$requirements" ]]; then
    echo "setup-schemathesis: missing $requirements" >&2
    exit 1
fi
# A venv whose interpreter vanished (the base Python was upgraded) is useless: rebuild it.
if [[ -d "$venv" && ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
fi
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo '*' > "$venv/.gitignore"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
"$venv/bin/st" --version > /dev/null
# Written only after a successful install, so a failed install is retried next time.
echo "$want" > "$stamp"
