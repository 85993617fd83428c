#!/usr/bin/env bash
# Installs the Garage S3 server (from crates.io) that the S3 tests run against. Idempotent:
# nothing happens when the pinned version is already installed. The first build takes about
# 15 minutes on 2 cores.
set -euo pipefail
version=2.5.0
bin="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "$version"; then
    exit 0
fi
echo "setup-garage: building garage $version (once; ~15 min on 2 cores)" >&2
cargo install garage --locked --version "$version" --quiet
