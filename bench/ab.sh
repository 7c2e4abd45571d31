#!/bin/bash
# Before/after of the HTTP path in ONE run: two bench_serve binaries, alternately on the same
# port, the same `cargo xtask load` against each (Functions envelope ×64 connections, direct
# ×100 events ×8 connections), ROUNDS rounds. Per run it prints events/s, the server's CPU
# per event (utime+stime from /proc/PID/stat over the measured window, divided by the
# events the server counted in that window, `GET /api/health`), the load generator's CPU
# per event, then VmHWM and the thread count; at the end the medians per server and shape.
#   bash bench/ab.sh OLD_BENCH_SERVE NEW_BENCH_SERVE [ROUNDS]
# (keep the old binary with `cp target/release/examples/bench_serve /tmp/bench_serve.before`
# before rebuilding). Needs target/release/xtask (`cargo build --release -p xtask`).
# AB_SECONDS (default 5) sets the measured window; AB_SHAPES ("functions direct") the shapes;
# AB_OLD_ENV / AB_NEW_ENV are extra environment (`VAR=value …`) for each server.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 rounds=${3:-2}
secs=${AB_SECONDS:-5}
shapes=${AB_SHAPES:-functions direct}
work=target/bench/ab; mkdir -p "$work"
results=$work/results.txt; : > "$results"
tck=$(getconf CLK_TCK)
port=18111
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
events() { curl -s "http://127.0.0.1:$port/api/health" | sed -n 's/.*"events":\([0-9]*\).*/\1/p'; }
run() {
  local name=$1 bin=$2 extra=$3
  rm -f "$work/$name.db"*
  # shellcheck disable=SC2086
  env $extra "$bin" --port "$port" --pipeline real --ledger "$work/$name.db" --policy-cache-dir target/bench/policy-cache \
    > /dev/null 2> "$work/$name.log" &
  local pid=$!
  sleep 2
  for shape in $shapes; do
    local conns=64; [ "$shape" = direct ] && conns=8
    # Warm-up (unmeasured), then the measured window with the server's CPU and event count
    # read around it.
    target/release/xtask load --addr 127.0.0.1:$port --shape "$shape" --connections "$conns" --seconds 1 \
      --warmup-secs 0 --run "$RANDOM" > /dev/null
    local load c0 e0 c1 e1 out
    load=$(cut -d' ' -f1 /proc/loadavg)
    c0=$(cpu_ticks "$pid"); e0=$(events)
    out=$( { /usr/bin/time -f 'LOADGEN %U %S' target/release/xtask load --addr 127.0.0.1:$port --shape "$shape" \
      --connections "$conns" --seconds "$secs" --warmup-secs 0 --run "$RANDOM"; } 2>&1 )
    c1=$(cpu_ticks "$pid"); e1=$(events)
    local summary lg evps
    summary=$(grep -v '^LOADGEN' <<< "$out")
    lg=$(grep '^LOADGEN' <<< "$out" | awk '{print $2 + $3}')
    evps=$(sed -n 's/.* req\/s, \([0-9]*\) events\/s.*/\1/p' <<< "$summary")
    local cpu_us lg_us
    cpu_us=$(awk -v c="$((c1 - c0))" -v t="$tck" -v n="$((e1 - e0))" 'BEGIN{printf "%.0f", n ? c / t * 1e6 / n : 0}')
    lg_us=$(awk -v s="$lg" -v n="$((e1 - e0))" 'BEGIN{printf "%.0f", n ? s * 1e6 / n : 0}')
    echo "$name $shape (load $load): ${evps} events/s, server ${cpu_us} µs CPU/event, loadgen ${lg_us} µs/event; $summary"
    echo "$name $shape $evps $cpu_us $lg_us" >> "$results"
  done
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  echo "$name VmHWM $((hwm / 1024)).$(( (hwm % 1024) * 10 / 1024 )) MB, threads $(ls "/proc/$pid/task" | wc -l)"
  echo "$name hwm $hwm" >> "$results"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$work/$name.db"*
}
for _ in $(seq "$rounds"); do
  run before "$old" "${AB_OLD_ENV:-}"
  run after "$new" "${AB_NEW_ENV:-}"
done
echo "medians over $rounds round(s) (events/s, server µs CPU/event, loadgen µs CPU/event; VmHWM):"
med() { sort -n | awk '{a[NR]=$1} END{print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for name in before after; do
  line="$name:"
  for shape in $shapes; do
    line="$line $shape $(awk -v n=$name -v s=$shape '$1==n && $2==s {print $3}' "$results" | med) ev/s"
    line="$line $(awk -v n=$name -v s=$shape '$1==n && $2==s {print $4}' "$results" | med) µs"
    line="$line ($(awk -v n=$name -v s=$shape '$1==n && $2==s {print $5}' "$results" | med) µs loadgen);"
  done
  hwm=$(awk -v n=$name '$1==n && $2=="hwm" {print $3}' "$results" | med)
  echo "$line VmHWM $(awk -v h="$hwm" 'BEGIN{printf "%.1f", h / 1024}') MB"
done
