#!/usr/bin/env bash
# Fault-injection soak, short form (issue 8; the full 10,000-event run and its figures are
# in BENCHMARKS.md "Soak"). The real `cmkguard serve` (enforce, SQLite ledger) against the
# real azsim process: 600 events with duplicates and Event Grid-style redeliveries while
# azsim throttles (429 + Retry-After), fails (5xx), slows down and drops connections, the
# chat receiver goes down for periods, and the handler is SIGKILLed once and restarted on
# the same ledger. Fails naming every violated invariant (ledger exactly once, no double
# rotation, actions accounted for, no duplicate notification). About 1–2 minutes; bounded
# at 3. Binaries come from the workspace test run (the build below is a no-op then).
# SOAK_SEED picks another plan (default 42, so CI is reproducible).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked --quiet -p cmkguard -p azsim -p cmkguard-e2e
start=$(date +%s)
timeout 200 target/release/soak --events 600 --kills 1 --seed "${SOAK_SEED:-42}" --max-minutes 3
echo "soak-short: passed in $(( $(date +%s) - start )) s"
