#!/usr/bin/env bash
# "A real client accepts azsim": Microsoft's Python SDK clients (ARM container registry,
# Key Vault keys, managed identity) against the azsim binary built by the workspace test
# run (target/release/azsim). Needs scripts/setup.d/30-azsim.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${AZSIM_SDK_VENV:-target/azsim-sdk-venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "30-azsim-sdk: $VENV is missing; run scripts/setup.d/30-azsim.sh" >&2
    exit 1
fi
if [[ ! -x target/release/azsim ]]; then
    echo "30-azsim-sdk: target/release/azsim is missing; run cargo build --release -p azsim" >&2
    exit 1
fi
exec timeout 300 "$VENV/bin/python" -m pytest -q -p no:cacheprovider azsim/sdk-tests
