#!/usr/bin/env bash
# Builds the python-notify policy into a component (no WASI imports: --stub-wasi).
# Usage: build.sh COMPONENTIZE_PY OUT.wasm
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$1" -d "$here/../../wit" -w policy componentize --stub-wasi -p "$here" app -o "$2"
