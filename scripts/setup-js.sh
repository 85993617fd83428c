#!/usr/bin/env bash
# Installs the npm dependencies of the matrix-js-sdk client tests (tests/clients/js).
#
# Idempotent: `npm ci` wipes and reinstalls node_modules, so it only runs when node_modules is
# missing or package-lock.json changed since the last install. The lock file's sha256 is kept
# inside node_modules, so deleting node_modules also forgets the stamp.
set -euo pipefail

js_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/clients/js"
lock="$js_dir/package-lock.json"
stamp="$js_dir/node_modules/.package-lock.sha256"

if ! command -v npm >/dev/null 2>&1; then
    echo "setup-js: npm not found (Node.js 20 is required)" >&2
    exit 1
fi
if [[ ! -f "$lock" ]]; then
    echo "setup-js: $lock is missing" >&2
    exit 1
fi

want="$(sha256sum "$lock" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"

if [[ -d "$js_dir/node_modules" && "$have" == "$want" ]]; then
    echo "setup-js: node_modules is up to date"
    exit 0
fi

echo "setup-js: installing npm dependencies in $js_dir"
(cd "$js_dir" && npm ci --no-audit --no-fund)
echo "$want" >"$stamp"
