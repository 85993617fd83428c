#!/usr/bin/env bash
# Installs what tests/clients/python/test_bridge_heisenbridge.py runs:
# - ngircd, a real IRC server: the Debian package (26.1 on bookworm; apt also pulls in libident),
#   with apt-get, only when it is not installed yet. The package starts a system ngircd on port
#   6667 where an init system runs it; the test runs its own on free ports, so that service is
#   stopped and disabled right after the install.
# - heisenbridge, a real IRC bridge (PyPI, pinned), into .venv-bridges: its own venv, because
#   heisenbridge pins mautrix-python and aiohttp ranges that must not meet the client test venv.
# Idempotent and quiet: a no-op when ngircd is installed and .venv-bridges/.installed matches the pin.
# Override the interpreter with PYTHON=/path/to/python3 (3.10+).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-bridges"
python="${PYTHON:-python3}"
version="1.15.4"

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi

ngircd_installed() {
    [[ "$(dpkg-query -W -f='${Status}' ngircd 2>/dev/null || true)" == "install ok installed" ]] \
        || command -v ngircd >/dev/null 2>&1 || [[ -x /usr/sbin/ngircd ]]
}

if ! ngircd_installed; then
    echo "setup-bridges: installing ngircd with apt-get"
    apt_install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ngircd)
    if ! "${apt_install[@]}"; then
        # Stale or missing package lists: refresh once and retry.
        "${sudo[@]}" apt-get update
        "${apt_install[@]}"
    fi
    # Stop and disable the system service the package may have started, and only that one (the
    # sysv script's stop also kills every process running /usr/sbin/ngircd, tests' included:
    # not used; its daemon is found by its pid file instead).
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${sudo[@]}" systemctl disable --now ngircd >/dev/null 2>&1 || true
    else
        if command -v update-rc.d >/dev/null 2>&1; then
            "${sudo[@]}" update-rc.d ngircd disable >/dev/null 2>&1 || true
        fi
        pid="$(cat /var/run/ngircd/ngircd.pid 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ && "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == */ngircd ]]; then
            "${sudo[@]}" kill "$pid" || true
        fi
    fi
fi
ngircd_installed || { echo "setup-bridges: ngircd is still missing after apt-get install" >&2; exit 1; }

# A venv whose interpreter vanished (the base Python was upgraded) is useless: rebuild it.
if [[ -d "$venv" && ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
fi
if [[ -f "$venv/.installed" && "$(cat "$venv/.installed")" == "$version" && -x "$venv/bin/heisenbridge" ]]; then
    exit 0
fi
echo "setup-bridges: installing heisenbridge $version into $venv"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo '*' >"$venv/.gitignore"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "heisenbridge==$version"
"$venv/bin/heisenbridge" --version >/dev/null
# Written only after a successful install, so a failed install is retried next time.
echo "$version" >"$venv/.installed"
