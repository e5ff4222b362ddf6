#!/usr/bin/env bash
# Benchmark of `collect --traces-file` end to end against the reference script (benches/reference.py):
# spans per second and peak RSS, on a generated Jaeger JSON Lines file (default ≥ 100k spans).
#
# Usage: benches/collect.sh [TRACES_PER_MINUTE] [RUNS]   (default 500 → about 117k spans; 3 runs, best taken)
# scripts/bench runs it at 100k, 1M and 5M spans.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-500}
runs=${2:-3}
work=target/bench
mkdir -p "$work"

cargo build --release --quiet --bin evidence-locker --example generate
./target/release/examples/generate --rate "$rate" --plain --out "$work/traces.jsonl" --incident "$work/incident.json" 2> "$work/generate.log"
spans=$(grep -o '[0-9]* spans' "$work/generate.log" | cut -d' ' -f1)
bytes=$(stat -c %s "$work/traces.jsonl")

# best wall time (s) and its peak RSS (KiB) over $runs runs of a command
measure() {
  local best_t="" best_rss=""
  for _ in $(seq "$runs"); do
    /usr/bin/time -f '%e %M' -o "$work/time.txt" "$@" > /dev/null 2> "$work/stderr.txt" || { cat "$work/stderr.txt"; exit 1; }
    read -r t rss < "$work/time.txt"
    if [ -z "$best_t" ] || awk "BEGIN{exit !($t < $best_t)}"; then best_t=$t; best_rss=$rss; fi
  done
  echo "$best_t $best_rss"
}

rm -rf "$work/evidence"
read -r el_t el_rss < <(measure ./target/release/evidence-locker collect --incident "$work/incident.json" --traces-file "$work/traces.jsonl" --out "$work/evidence")
read -r py_t py_rss < <(measure python3 benches/reference.py "$work/traces.jsonl")
# One bundle's size: each run wrote a capture of its own under the incident.
bundle=$(du -sb "$(find "$work/evidence" -mindepth 2 -maxdepth 2 -type d | sort | tail -1)" | cut -f1)

awk -v spans="$spans" -v bytes="$bytes" -v bundle="$bundle" -v el_t="$el_t" -v el_rss="$el_rss" -v py_t="$py_t" -v py_rss="$py_rss" 'BEGIN {
  printf "input: %d spans, %.1f MB of Jaeger JSON Lines\n\n", spans, bytes / 1e6
  printf "| run | wall time | spans/s | MB/s | peak RSS | RSS / input |\n|---|---|---|---|---|---|\n"
  printf "| evidence-locker collect (parse, analyse, write the whole bundle) | %.2f s | %.0f | %.1f | %.1f MB | %.2f |\n", el_t, spans / (el_t > 0 ? el_t : 0.01), bytes / 1e6 / (el_t > 0 ? el_t : 0.01), el_rss * 1024 / 1e6, el_rss * 1024 / bytes
  printf "| reference.py (tags dictionary per span, datetime per error span, sort) | %.2f s | %.0f | %.1f | %.1f MB | %.2f |\n", py_t, spans / (py_t > 0 ? py_t : 0.01), bytes / 1e6 / (py_t > 0 ? py_t : 0.01), py_rss * 1024 / 1e6, py_rss * 1024 / bytes
  printf "\nbundle: %.1f MB for %.1f MB of input (%.1f%%)\n", bundle / 1e6, bytes / 1e6, 100 * bundle / bytes
  printf "\nspeed-up: %.1f×\n", py_t / (el_t > 0 ? el_t : 0.01)
}'
