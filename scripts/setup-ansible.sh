#!/usr/bin/env bash
# Installs what tests/deploy/ansible_role.py runs:
# - ansible-core and ansible-lint from PyPI (pinned) into .venv-ansible, a venv of their own;
# - nginx and Caddy (Debian's packages) for the reverse proxies the role configures, with
#   apt-get, only when missing. Debian's packages start their service where an init system runs;
#   the test runs its own on free ports, so those services are stopped and disabled right after
#   the install (only those: never by process name).
# Idempotent and quiet: a no-op when both proxies are installed and .venv-ansible/.installed
# matches the pins. Override the interpreter with PYTHON=/path/to/python3 (3.11+).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-ansible"
python="${PYTHON:-python3}"
pins="ansible-core==2.18.19 ansible-lint==26.10.1"

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi

installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]; }

missing=()
for pkg in nginx caddy; do
    installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup-ansible: installing ${missing[*]} with apt-get"
    apt_install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
    if ! "${apt_install[@]}"; then
        "${sudo[@]}" apt-get update
        "${apt_install[@]}"
    fi
    for pkg in "${missing[@]}"; do
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            "${sudo[@]}" systemctl disable --now "$pkg" >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null 2>&1; then
            "${sudo[@]}" update-rc.d "$pkg" disable >/dev/null 2>&1 || true
        fi
    done
fi

if [[ -d "$venv" && ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
fi
if [[ -f "$venv/.installed" && "$(cat "$venv/.installed")" == "$pins" && -x "$venv/bin/ansible-playbook" ]]; then
    exit 0
fi
echo "setup-ansible: installing $pins into $venv"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo '*' > "$venv/.gitignore"
# shellcheck disable=SC2086
"$venv/bin/pip" install --quiet --disable-pip-version-check $pins
echo "$pins" > "$venv/.installed"
