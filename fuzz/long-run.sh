#!/usr/bin/env bash
# The documented long fuzz run (docs/fuzzing.md): every target for RUNS executions
# (default 10 million), from the fixture seeds plus the corpus kept in
# fuzz/corpus/<target> (gitignored), at the lowest CPU priority, JOBS targets at a time
# (default: one per core).
#
#   bash fuzz/long-run.sh [RUNS]        logs: target/fuzz-long/<target>.log
#   FUZZ_SANITIZER=address bash fuzz/long-run.sh    (default: none)
#   TARGETS="validate facts" bash fuzz/long-run.sh  (default: every target)
#
# Sanitizer: the fuzzed crates (cmkguard-model, cmkguard-events, azsim's scenario loader)
# contain no `unsafe`, so AddressSanitizer has nothing of ours to catch; without it a
# target runs several times faster (docs/fuzzing.md has both rates). Debug assertions and
# overflow checks stay on either way. The CI smoke run (scripts/check.d/45-fuzz.sh) keeps
# AddressSanitizer.
#
# Any crash stops that target with a non-zero status and an artifact in
# target/fuzz-long/artifacts/<target>/; the script exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10000000}"
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${JOBS:-$(nproc)}"
export RUSTC_BOOTSTRAP=1
out=target/fuzz-long
mkdir -p "$out"
rm -rf "$out/seeds" && python3 fuzz/seed.py "$out/seeds"
# Its own target dir per sanitizer, so that the smoke run's build (target/fuzz) stays warm.
flags=(--fuzz-dir fuzz --target-dir "target/fuzz-$sanitizer" -s "$sanitizer")
nice -n 19 cargo fuzz build "${flags[@]}"
targets="${TARGETS:-$(cargo fuzz list --fuzz-dir fuzz)}"
run_one() {
    local t=$1
    mkdir -p "fuzz/corpus/$t" "$out/artifacts/$t"
    nice -n 19 cargo fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "$out/seeds/$t" -- \
        -runs="$runs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$t/" >"$out/$t.log" 2>&1
}
status=0
running=0
for t in $targets; do
    run_one "$t" &
    running=$((running + 1))
    if (( running >= jobs )); then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while (( running > 0 )); do
    wait -n || status=1
    running=$((running - 1))
done
for t in $targets; do
    printf '%-20s %s\n' "$t" "$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$out/$t.log" | tr '\n' ' ')"
done
exit "$status"
