#!/usr/bin/env bash
# The documented long fuzz run (docs/fuzzing.md): every target for RUNS executions
# (default 10 million), all targets side by side at the lowest CPU priority, each from
# the fixture seeds plus the corpus kept in fuzz/corpus/<target> (gitignored).
#
#   bash fuzz/long-run.sh [RUNS]        logs: target/fuzz-long/<target>.log
#
# Any crash stops that target with a non-zero status and an artifact in
# target/fuzz-long/artifacts/<target>/; the script exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10000000}"
export RUSTC_BOOTSTRAP=1
out=target/fuzz-long
mkdir -p "$out"
rm -rf "$out/seeds" && python3 fuzz/seed.py "$out/seeds"
flags=(--fuzz-dir fuzz --target-dir target/fuzz -a)
cargo fuzz build "${flags[@]}"
pids=()
targets=$(cargo fuzz list --fuzz-dir fuzz)
for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "$out/artifacts/$t"
    nice -n 19 cargo fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "$out/seeds/$t" -- \
        -runs="$runs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$t/" >"$out/$t.log" 2>&1 &
    pids+=("$!")
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in $targets; do
    printf '%-20s %s\n' "$t" "$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$out/$t.log" | tr '\n' ' ')"
done
exit "$status"
