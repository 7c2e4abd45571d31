#!/usr/bin/env bash
# Builds cmkguard, starts `cmkguard serve` as the Functions host would (port from
# FUNCTIONS_CUSTOMHANDLER_PORT), sends it one Key Vault event the way the host does, prints
# the answer and the handler's log, and stops it. Needs no Azure account.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p cmkguard --bin cmkguard
bin=target/release/cmkguard
port=$(( 20000 + RANDOM % 20000 ))
log=$(mktemp)
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

FUNCTIONS_CUSTOMHANDLER_PORT=$port "$bin" serve >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "cmkguard exited early" >&2; exit 1; }
    sleep 0.1
done

echo "== POST /KeyVaultEvents (a KeyNearExpiry event, as the Functions host sends it)"
curl -fsS -X POST "http://127.0.0.1:$port/KeyVaultEvents" \
    -H 'content-type: application/json' \
    -H 'X-Azure-Functions-InvocationId: demo-0001' \
    --data-binary @examples/invocations/KeyVaultEvents.key-near-expiry.json
echo
kill -TERM "$pid"
wait "$pid"
echo "== cmkguard log"
cat "$log"
