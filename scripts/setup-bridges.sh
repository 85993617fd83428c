#!/usr/bin/env bash
# Installs what tests/clients/python/test_bridge_heisenbridge.py runs: ngircd, a real IRC server
# (the Debian package, with apt-get, only when missing), and heisenbridge, a real IRC bridge
# (PyPI, pinned), into .venv-bridges: its own venv, because heisenbridge pins mautrix-python and
# aiohttp ranges that must not meet the client test venv.
# Idempotent: a quick no-op when ngircd is on PATH and .venv-bridges/.installed matches the pin.
# Override the interpreter with PYTHON=/path/to/python3 (3.10+).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-bridges"
python="${PYTHON:-python3}"
version="1.15.4"

if ! command -v ngircd >/dev/null 2>&1; then
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        sudo=(sudo)
    fi
    echo "setup-bridges: installing ngircd with apt-get"
    # The package starts a system ngircd on port 6667; the tests run their own on free ports,
    # so keep the package from starting one (policy-rc.d) and stop it if it did.
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y ngircd; then
        "${sudo[@]}" apt-get update
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y ngircd
    fi
    if command -v systemctl >/dev/null 2>&1; then
        "${sudo[@]}" systemctl disable --now ngircd >/dev/null 2>&1 || true
    fi
    "${sudo[@]}" pkill -x ngircd >/dev/null 2>&1 || true
fi
command -v ngircd >/dev/null 2>&1 || { echo "setup-bridges: ngircd is still missing" >&2; exit 1; }

if [[ -f "$venv/.installed" && "$(cat "$venv/.installed")" == "$version" ]]; then
    exit 0
fi
echo "setup-bridges: installing heisenbridge $version into $venv"
"$python" -m venv "$venv"
echo '*' >"$venv/.gitignore"
"$venv/bin/pip" install --quiet --disable-pip-version-check "heisenbridge==$version"
"$venv/bin/heisenbridge" --help >/dev/null
echo "$version" >"$venv/.installed"
