#!/usr/bin/env bash
# Installs what the deployment tests run (tests/deploy/ansible_role.py, tests/deploy/container.py):
# - ansible-core, ansible-lint and podman-compose from PyPI (pinned) into .venv-deploy, a venv of
#   their own;
# - Debian's packages, with apt-get, only when missing: nginx and Caddy for the reverse proxies
#   the role configures; podman, runc and debootstrap for the container image (the test makes its
#   Debian base image with debootstrap: no container registry is reachable from test machines),
#   and the CNI dnsname plugin, which Debian's podman only recommends: without it the compose
#   example's moss cannot resolve the name `garage`.
#   nginx's and Caddy's packages start their service where an init system runs; the tests run
#   their own on free ports, so those services are stopped and disabled right after the install
#   (only those: never by process name).
# Idempotent and quiet: a no-op when the packages are installed and .venv-deploy/.installed
# matches the pins. Override the interpreter with PYTHON=/path/to/python3 (3.11+).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-deploy"
python="${PYTHON:-python3}"
pins="ansible-core==2.18.19 ansible-lint==26.10.1 podman-compose==1.6.0"

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi

installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]; }

missing=()
for pkg in nginx caddy podman runc debootstrap golang-github-containernetworking-plugin-dnsname; do
    installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup-deploy: installing ${missing[*]} with apt-get"
    apt_install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
    if ! "${apt_install[@]}"; then
        "${sudo[@]}" apt-get update
        "${apt_install[@]}"
    fi
    for pkg in "${missing[@]}"; do
        [[ "$pkg" == nginx || "$pkg" == caddy ]] || continue
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
echo "setup-deploy: installing $pins into $venv"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo '*' > "$venv/.gitignore"
# shellcheck disable=SC2086
"$venv/bin/pip" install --quiet --disable-pip-version-check $pins
echo "$pins" > "$venv/.installed"
