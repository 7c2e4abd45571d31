#!/usr/bin/env bash
# Policy prerequisites:
# - the wasm32-unknown-unknown Rust target (the Rust policies; crates/policy/build.rs
#   installs it too, this makes a failure visible early);
# - componentize-py in a venv under target/, and the python-notify policy built with it
#   into target/policy-wasm/components/python-notify.wasm (the cargo tests run it
#   through the shared test cases; they fail naming this script when it is missing).
# Idempotent: the venv is kept while its stamp matches; the component is rebuilt only
# when its sources or the contract changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || {
    echo "20-policy: 'rustup target add wasm32-unknown-unknown' failed" >&2
    exit 1
}

VENV="${CMKGUARD_POLICY_VENV:-target/policy-py-venv}"
COMPONENTIZE_PY_VERSION="0.25.1"
STAMP="$VENV/.cmkguard-stamp"
WANT="python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') componentize-py=$COMPONENTIZE_PY_VERSION"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/componentize-py" ]]; then
    echo "20-policy: $VENV up to date ($WANT)"
else
    echo "20-policy: installing $WANT into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
    echo "$WANT" > "$STAMP"
fi

OUT_DIR="target/policy-wasm/components"
OUT="$OUT_DIR/python-notify.wasm"
SRC_STAMP="$OUT_DIR/python-notify.inputs"
mkdir -p "$OUT_DIR"
inputs="$(cat wit/*.wit policy-wasm/python-notify/*.py policy-wasm/python-notify/build.sh | sha256sum | cut -d' ' -f1) $WANT"
if [[ -f "$OUT" && -f "$SRC_STAMP" && "$(cat "$SRC_STAMP")" == "$inputs" ]]; then
    echo "20-policy: $OUT up to date"
    exit 0
fi
echo "20-policy: building $OUT (componentize-py, --stub-wasi)"
tmp="$OUT.tmp"
policy-wasm/python-notify/build.sh "$VENV/bin/componentize-py" "$tmp" >/dev/null
mv "$tmp" "$OUT"
echo "$inputs" > "$SRC_STAMP"
echo "20-policy: done ($(wc -c < "$OUT") bytes)"
