#!/usr/bin/env bash
# Infra checks (offline): every ARM template and parameters file against the Azure
# resource schemas (plain and --strict) and checkov with the custom checks; a mutation
# test proving the validation catches deliberate mistakes; then the zip-deploy package,
# built from the release binary the workspace build already made, unzipped and started.
set -euo pipefail
cd "$(dirname "$0")/../.."

KIT="${ARM_SCHEMAS_KIT:-../shared/arm-schemas}"
VENV="${CMKGUARD_INFRA_VENV:-target/infra-venv}"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    echo "40-infra: $PY is missing: run scripts/setup.d/40-infra.sh first" >&2
    exit 1
fi
if [[ ! -f "$KIT/tools/validate_arm.py" ]]; then
    echo "40-infra: the arm-schemas kit is not at $KIT (set ARM_SCHEMAS_KIT)" >&2
    exit 1
fi
KIT="$(cd "$KIT" && pwd)"

echo "== 40-infra: template validation"
"$PY" infra/validate.py --kit "$KIT"

echo "== 40-infra: mutation test"
"$PY" infra/tests/mutations.py --kit "$KIT"

echo "== 40-infra: package"
# Reuses target/release/cmkguard from `cargo test --release --workspace` (built only if missing).
cargo xtask package --out target/package
cargo xtask verify-package target/package/cmkguard.zip
echo "40-infra: ok"
