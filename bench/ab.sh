#!/bin/bash
# Before/after of the HTTP path in ONE run: two bench_serve binaries, alternately on the same
# port, the same `cargo xtask load` against each (Functions envelope ×64 connections, direct
# ×100 events ×8 connections), ROUNDS rounds; prints events/s, VmHWM and thread count.
#   bash bench/ab.sh OLD_BENCH_SERVE NEW_BENCH_SERVE [ROUNDS]
# (keep the old binary with `cp target/release/examples/bench_serve /tmp/bench_serve.before`
# before rebuilding). Needs target/release/xtask (`cargo build --release -p xtask`).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-2}
work=target/bench/ab; mkdir -p "$work"
run() {
  local name=$1 bin=$2; shift 2
  rm -f "$work/$name.db"*
  "$bin" --port 18111 --pipeline real --ledger "$work/$name.db" --policy-cache-dir target/bench/policy-cache "$@" \
    > /dev/null 2> "$work/$name.log" &
  local pid=$!
  sleep 2
  for shape in functions direct; do
    local conns=64; [ "$shape" = direct ] && conns=8
    echo "$name $shape (load $(cut -d' ' -f1 /proc/loadavg)): $(target/release/xtask load --addr 127.0.0.1:18111 \
      --shape "$shape" --connections "$conns" --seconds 5 --warmup-secs 1 --run "$RANDOM")"
  done
  echo "$name $(grep VmHWM /proc/$pid/status | tr -s ' \t' ' '), threads $(ls /proc/$pid/task | wc -l)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$rounds"); do
  run before "$old"
  run after "$new"
done
