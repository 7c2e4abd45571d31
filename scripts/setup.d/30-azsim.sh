#!/usr/bin/env bash
# azsim SDK-test prerequisites: a venv under target/ with Microsoft's official Python SDK
# clients (azure-mgmt-containerregistry, azure-keyvault-keys, azure-identity) and pytest,
# pinned in azsim/sdk-tests/requirements.txt. Idempotent: kept while its stamp matches.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${AZSIM_SDK_VENV:-target/azsim-sdk-venv}"
REQ="azsim/sdk-tests/requirements.txt"
WANT="python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') req=$(sha256sum "$REQ" | cut -d' ' -f1)"
STAMP="$VENV/.cmkguard-stamp"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    echo "30-azsim: $VENV up to date"
    exit 0
fi
echo "30-azsim: installing $REQ into $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV" || { echo "30-azsim: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" || {
    echo "30-azsim: pip install -r $REQ failed" >&2
    exit 1
}
echo "$WANT" > "$STAMP"
