#!/usr/bin/env bash
# Fuzz smoke (docs/fuzzing.md): builds the cargo-fuzz targets in fuzz/ and runs each for
# FUZZ_SECONDS (default 12) from the seed corpus built from the fixtures. Fails on any
# crash, panic, broken invariant, out-of-memory or per-input timeout.
#
# cargo-fuzz needs nightly flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the installed
# stable 1.95 compiler accept them. The fuzz crate is its own workspace with its own
# target dir (target/fuzz): instrumented builds cannot share artifacts with the release
# build. It depends only on the light crates (model, events), never on wasmtime.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1
secs="${FUZZ_SECONDS:-12}"
work=target/fuzz-smoke
flags=(--fuzz-dir fuzz --target-dir target/fuzz -a)

rm -rf "$work"
python3 fuzz/seed.py "$work/seeds"
cargo fuzz build "${flags[@]}"
failed=()
for t in $(cargo fuzz list --fuzz-dir fuzz); do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/seeds/$t"
    if cargo fuzz run "${flags[@]}" "$t" "$work/corpus/$t" "$work/seeds/$t" -- \
        -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/$t/" >"$work/$t.log" 2>&1; then
        echo "45-fuzz: $t ok ($(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$work/$t.log" | grep -oE '[0-9]+$') runs)"
    else
        echo "45-fuzz: $t FAILED; the input is in $work/artifacts/$t/, the log follows" >&2
        grep -A30 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer' "$work/$t.log" | head -60 >&2
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "45-fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
