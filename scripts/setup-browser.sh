#!/usr/bin/env bash
# Installs what the real-browser client test (tests/clients/browser, run with `node run.mjs`)
# needs: Debian's Chromium, the npm packages (hydrogen-view-sdk, @matrix-org/olm, Vite,
# playwright-core), and the Vite build of the Hydrogen test app in tests/clients/browser/dist.
# The test's Bob is matrix-nio from the repo's .venv: scripts/setup-python.sh installs that.
#
# Idempotent, so CI and developers can call it before every run:
#   - Chromium is installed only when /usr/bin/chromium is missing (sudo only when not root).
#   - `npm ci` wipes and reinstalls node_modules, so it only runs when node_modules is missing or
#     package-lock.json changed since the last install (same stamp as scripts/setup-js.sh: the
#     lock file's sha256 kept inside node_modules, so deleting node_modules forgets it too).
#   - The app is rebuilt every time: a Vite build of it takes about 3 s, cheaper and safer than
#     working out whether dist/ is older than its inputs (src/, index.html, the config, the
#     installed packages).
set -euo pipefail

browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/clients/browser"
lock="$browser_dir/package-lock.json"
stamp="$browser_dir/node_modules/.package-lock.sha256"

# --- Chromium (Debian package; playwright-core drives it, never downloads a browser) ---------
if [[ ! -x /usr/bin/chromium ]]; then
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        sudo=(sudo)
    fi
    echo "setup-browser: installing chromium with apt-get"
    # A machine whose package lists were never fetched (or are stale) cannot install anything:
    # refresh them once and retry.
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; then
        "${sudo[@]}" apt-get update
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
    fi
else
    echo "setup-browser: chromium is installed"
fi

# --- npm packages -----------------------------------------------------------------------------
if ! command -v npm >/dev/null 2>&1; then
    echo "setup-browser: npm not found (Node.js 20 is required)" >&2
    exit 1
fi
if [[ ! -f "$lock" ]]; then
    echo "setup-browser: $lock is missing" >&2
    exit 1
fi

want="$(sha256sum "$lock" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"

if [[ -d "$browser_dir/node_modules" && "$have" == "$want" ]]; then
    echo "setup-browser: node_modules is up to date"
else
    echo "setup-browser: installing npm dependencies in $browser_dir"
    (cd "$browser_dir" && npm ci --no-audit --no-fund)
    echo "$want" >"$stamp"
fi

# --- the Hydrogen app -------------------------------------------------------------------------
echo "setup-browser: building the Hydrogen test app into $browser_dir/dist"
(cd "$browser_dir" && npx --no-install vite build --logLevel warn)
