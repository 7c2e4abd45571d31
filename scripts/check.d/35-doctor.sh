#!/usr/bin/env bash
# `cmkguard doctor` end to end: the real binary, its production credential path
# (azure_identity's ManagedIdentityCredential via IDENTITY_ENDPOINT/IDENTITY_HEADER) and a
# JSON cloud profile (extra CA + loopback resolution inside the client) against the azsim
# binary. Expects exit 0 when everything is in order, exit 1 with a failing token check
# when the identity header is wrong. Binaries come from the workspace test run.
set -euo pipefail
cd "$(dirname "$0")/../.."

for b in target/release/azsim target/release/cmkguard; do
    if [[ ! -x "$b" ]]; then
        echo "35-doctor: $b is missing; run cargo build --release -p azsim -p cmkguard" >&2
        exit 1
    fi
done

work="$(mktemp -d)"
azsim_pid=""
cleanup() {
    if [[ -n "$azsim_pid" ]]; then kill "$azsim_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

target/release/azsim --scenario azsim/scenarios/demo.json --write-ca "$work/ca.pem" >"$work/azsim.json" 2>"$work/azsim.log" &
azsim_pid=$!
for _ in $(seq 1 100); do
    [[ -s "$work/azsim.json" ]] && break
    sleep 0.1
done
if [[ ! -s "$work/azsim.json" ]]; then
    echo "35-doctor: azsim did not start" >&2
    cat "$work/azsim.log" >&2
    exit 1
fi

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
a = json.load(open(f"{work}/azsim.json"))
profile = {
    "name": "azsim", "armEndpoint": a["armEndpoint"], "resourceGraphEndpoint": a["resourceGraphEndpoint"],
    "keyVaultSuffix": a["vaultSuffix"], "managedHsmSuffix": a["hsmSuffix"],
    "armAudience": a["armAudience"], "keyVaultAudience": a["vaultAudience"],
    "managedHsmAudience": "https://" + a["hsmSuffix"], "authorityHost": "https://login.azsim.test",
    "identityEndpoint": a["identityEndpoint"], "port": a["port"],
    "test": {"extraCaPemFile": "ca.pem", "resolveToLoopback": True},
}
json.dump(profile, open(f"{work}/profile.json", "w"))
with open(f"{work}/env", "w") as f:
    f.write(f"IDENTITY_ENDPOINT={a['identityEndpoint']}\nIDENTITY_HEADER={a['identityHeader']}\n")
PY

identity_endpoint="$(sed -n 's/^IDENTITY_ENDPOINT=//p' "$work/env")"
identity_header="$(sed -n 's/^IDENTITY_HEADER=//p' "$work/env")"

doctor() {
    env -i PATH="$PATH" HOME="$work" \
        IDENTITY_ENDPOINT="$identity_endpoint" IDENTITY_HEADER="$1" \
        AZURE_CLIENT_ID=6f1c2a0e-5b8d-4c55-9d3e-1a2b3c4d5e6f \
        CMKGUARD_CLOUD="$work/profile.json" \
        CMKGUARD_SUBSCRIPTIONS=0b1f6471-1bf0-4dda-aec3-cb9272f09590 \
        CMKGUARD_CHANNELS=ops=webhook \
        CMKGUARD_CHANNEL_OPS_URL=https://chat.example.invalid/hook \
        CMKGUARD_CHANNEL_OPS_SECRET=doctor-check-signing-key \
        timeout 120 target/release/cmkguard doctor --check-timeout-secs 10 "${@:2}"
}

echo "35-doctor: healthy deployment"
doctor "$identity_header"

echo "35-doctor: wrong identity header must fail"
set +e
doctor "wrong-header" --json >"$work/bad.json"
rc=$?
set -e
if [[ $rc -ne 1 ]]; then
    echo "35-doctor: expected exit 1 with a broken identity, got $rc" >&2
    cat "$work/bad.json" >&2
    exit 1
fi
python3 - "$work/bad.json" <<'PY'
import json, sys
checks = json.load(open(sys.argv[1]))
token = [c for c in checks if c["name"].startswith("token for ARM")]
assert token and token[0]["status"] == "fail", checks
assert "AZURE_CLIENT_ID" in token[0]["fix"], token[0]
print("35-doctor: broken identity reported:", token[0]["detail"][:120])
PY
echo "35-doctor: ok"
