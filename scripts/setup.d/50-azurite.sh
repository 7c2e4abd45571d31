#!/usr/bin/env bash
# Installs Azurite (the Azure Storage emulator, from npm) under target/azurite for the
# ledger's Blob-backend tests and benchmark. The test harness starts and stops it itself
# (blob service only, HTTPS with a generated certificate, --oauth basic).
# Idempotent: does nothing when the pinned version is already installed.
set -euo pipefail

AZURITE_VERSION="3.37.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${CARGO_TARGET_DIR:-$root/target}/azurite"
bin="$dir/node_modules/.bin/azurite-blob"

if ! command -v npm >/dev/null 2>&1; then
    echo "50-azurite: npm is required to install Azurite (apt-get install nodejs npm)" >&2
    exit 1
fi

if [[ -x "$bin" ]] && [[ "$(node -p "require('$dir/node_modules/azurite/package.json').version" 2>/dev/null)" == "$AZURITE_VERSION" ]]; then
    echo "50-azurite: azurite $AZURITE_VERSION already installed at $dir"
    exit 0
fi

mkdir -p "$dir"
[[ -f "$dir/package.json" ]] || echo '{"name":"cmkguard-azurite","private":true}' >"$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
"$bin" --version >/dev/null
echo "50-azurite: installed azurite $AZURITE_VERSION at $dir"
