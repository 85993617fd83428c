#!/usr/bin/env bash
# Installs what the synapse-admin web UI test (tests/clients/admin-ui, run with `node run.mjs`)
# needs:
#   - a build of synapse-admin 0.11.4 (the vendored source, tests/clients/admin-ui/vendor/synapse-admin, or
#     $SYNAPSE_ADMIN_SRC) in tests/clients/admin-ui/synapse-admin/dist, made with the Yarn 4
#     release that the source vendors (its dependencies come from the npm registry);
#   - the test's own npm packages (playwright-core) in tests/clients/admin-ui/node_modules.
# Chromium comes from scripts/setup-browser.sh (Debian's /usr/bin/chromium), which must have run.
#
# Idempotent and quiet on success, so CI and developers can call it before every run:
#   - The vendored source is read-only (mode 0444), so it is copied to a writable folder and
#     built there. The copy is remade and rebuilt only when the source changed: a sha256 over
#     every file of the source is kept next to the build (.moss-source.sha256) and written only
#     after a successful build, so an interrupted build is redone on the next call.
#   - `npm ci` wipes and reinstalls node_modules, so it only runs when node_modules is missing or
#     package-lock.json changed since the last install (the same stamp as scripts/setup-js.sh).
# On failure it prints the tail of the tool's output (the full log is in the build folder).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ui_dir="$repo/tests/clients/admin-ui"
src="${SYNAPSE_ADMIN_SRC:-$ui_dir/vendor/synapse-admin}"
build="$ui_dir/synapse-admin"
source_stamp="$build/.moss-source.sha256"
lock="$ui_dir/package-lock.json"
npm_stamp="$ui_dir/node_modules/.package-lock.sha256"
log="$ui_dir/setup.log"

fail() {
    echo "setup-admin-ui: $*" >&2
    exit 1
}

# Runs a command with its output in $log; on failure shows the log's tail and stops.
quiet() {
    if ! "$@" >>"$log" 2>&1; then
        echo "setup-admin-ui: '$*' failed (in $PWD); last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

# --- prerequisites ----------------------------------------------------------------------------
command -v node >/dev/null 2>&1 || fail "node not found (Node.js >= 20.19 is required: Vite 8)"
command -v npm >/dev/null 2>&1 || fail "npm not found (Node.js >= 20.19 is required)"
node -e '
    const [maj, min] = process.versions.node.split(".").map(Number);
    if (maj < 20 || (maj === 20 && min < 19)) process.exit(1);
' || fail "Node.js $(node --version) is too old: synapse-admin builds with Vite 8, which needs >= 20.19"
chromium="${CHROMIUM:-/usr/bin/chromium}"
[[ -x "$chromium" ]] || fail "$chromium is missing: run scripts/setup-browser.sh first (it installs Debian's chromium)"
[[ -f "$src/package.json" && -f "$src/yarn.lock" ]] ||
    fail "synapse-admin source not found at $src (set SYNAPSE_ADMIN_SRC to the vendored folder)"
[[ -f "$lock" ]] || fail "$lock is missing"

: >"$log"

# --- synapse-admin build ------------------------------------------------------------------------
# Every file of the source, names and contents (the folder is a few MB: this takes well under 1 s).
want_src="$(cd "$src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
have_src="$(cat "$source_stamp" 2>/dev/null || true)"

if [[ "$have_src" != "$want_src" || ! -f "$build/dist/index.html" ]]; then
    yarn_release=("$src"/.yarn/releases/yarn-*.cjs)
    [[ -f "${yarn_release[0]}" ]] || fail "no vendored Yarn release in $src/.yarn/releases"
    yarn_rel_path=".yarn/releases/$(basename "${yarn_release[0]}")"

    if [[ -d "$build" ]]; then
        chmod -R u+w "$build"
        rm -rf "$build"
    fi
    cp -R "$src" "$build"
    # The copy keeps the source's read-only modes: Yarn writes .pnp.cjs and its install state,
    # Vite writes dist/ (and copies public/config.json, which the test rewrites).
    chmod -R u+w "$build"

    export YARN_ENABLE_TELEMETRY=0 YARN_ENABLE_PROGRESS_BARS=0 YARN_ENABLE_INLINE_BUILDS=0
    cd "$build"
    quiet node "$yarn_rel_path" install --immutable
    quiet node "$yarn_rel_path" build
    [[ -f dist/index.html ]] || fail "the synapse-admin build produced no dist/index.html (see $log)"
    echo "$want_src" >"$source_stamp"
    cd "$repo"
fi

# --- the test's npm packages ----------------------------------------------------------------------
want_lock="$(sha256sum "$lock" | cut -d' ' -f1)"
have_lock="$(cat "$npm_stamp" 2>/dev/null || true)"
if [[ ! -d "$ui_dir/node_modules" || "$have_lock" != "$want_lock" ]]; then
    cd "$ui_dir"
    quiet npm ci --no-audit --no-fund --loglevel=error
    echo "$want_lock" >"$npm_stamp"
    cd "$repo"
fi

rm -f "$log"
