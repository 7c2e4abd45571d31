#!/usr/bin/env bash
# Renders the Teams Adaptive Card that cmkguard-notify produces for a sample
# near-expiry notification and screenshots it with headless Chromium, writing
# docs/adaptive-card/teams-card.png. Run by hand (not part of CI):
#
#   bash docs/adaptive-card/render.sh
#
# Installs (if missing) Debian's `chromium` and a font, and the `adaptivecards`
# renderer from npm into target/adaptive-card. Needs root or sudo for apt-get.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/adaptive-card"
out="${1:-$here/teams-card.png}"
adaptivecards_version=3.0.6
mkdir -p "$work"

# 1. Chromium and a font close to Teams' (Segoe UI is not redistributable).
if ! command -v chromium >/dev/null 2>&1 || ! fc-list | grep -qi "open sans"; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        chromium fonts-open-sans fonts-dejavu-core
fi

# 2. The Adaptive Cards JS renderer, pinned.
if [ ! -f "$work/node_modules/adaptivecards/package.json" ] ||
    ! grep -q "\"version\": \"$adaptivecards_version\"" "$work/node_modules/adaptivecards/package.json"; then
    npm install --prefix "$work" --no-audit --no-fund --no-save --loglevel=error "adaptivecards@$adaptivecards_version"
fi
cp "$work/node_modules/adaptivecards/dist/adaptivecards.min.js" "$work/"

# 3. The payload exactly as the crate builds it (pinned clock, so the picture is reproducible).
(cd "$root" && cargo run --quiet --release -p cmkguard-notify --example teams-card) >"$work/payload.json"
{
    printf 'window.CMKGUARD_PAYLOAD = '
    cat "$work/payload.json"
    printf ';\n'
} >"$work/card.js"
cp "$here/index.html" "$work/index.html"

# 4. Screenshot. Headless, no network beyond file://, throwaway profile.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --virtual-time-budget=5000 \
    --force-device-scale-factor=1 --window-size=648,450 \
    --screenshot="$work/teams-card.png" "file://$work/index.html" 2>"$work/chromium.log" || {
    cat "$work/chromium.log" >&2
    exit 1
}

# 5. A render error would show as red text in the picture; fail loudly instead.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --virtual-time-budget=5000 --dump-dom "file://$work/index.html" \
    2>>"$work/chromium.log" >"$work/dom.html"
if ! grep -q "<title>rendered</title>" "$work/dom.html" || grep -q 'id="error">[^<]' "$work/dom.html"; then
    echo "render.sh: the card did not render cleanly; see $work/dom.html" >&2
    exit 1
fi
cp "$work/teams-card.png" "$out"
echo "wrote $out"
