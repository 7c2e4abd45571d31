#!/usr/bin/env bash
# Installs the offline template-validation tools (jsonschema for the ARM schema kit,
# checkov for policy checks) into a venv under target/. Idempotent: a stamp file
# records the pinned versions, so a second run only checks the stamp.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${CMKGUARD_INFRA_VENV:-target/infra-venv}"
JSONSCHEMA_VERSION="4.26.0"
CHECKOV_VERSION="3.3.30"
STAMP="$VENV/.cmkguard-stamp"
WANT="python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') jsonschema=$JSONSCHEMA_VERSION checkov=$CHECKOV_VERSION"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/checkov" && -x "$VENV/bin/python" ]]; then
    echo "40-infra: $VENV up to date ($WANT)"
    exit 0
fi

echo "40-infra: installing $WANT into $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "jsonschema==$JSONSCHEMA_VERSION" "checkov==$CHECKOV_VERSION"
"$VENV/bin/python" -c 'import jsonschema, referencing' 
BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE "$VENV/bin/checkov" --version >/dev/null
echo "$WANT" > "$STAMP"
echo "40-infra: done"
