#!/usr/bin/env bash
# Audits N signed bundles on the local store with the release binary and prints its figures
# (bundles, objects, bytes, seconds, objects/s, MB/s). The bundles are real `collect` bundles
# of the demo traces, one per incident, each signed with a throwaway ed25519 key.
#
# Usage: benches/audit.sh [N=200]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
bin=target/release/evidence-locker
[ -x "$bin" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl genpkey -algorithm ed25519 -out "$work/key.pem" 2>/dev/null
openssl pkey -in "$work/key.pem" -pubout -out "$work/trusted.pem"
start=$(date +%s.%N)
for i in $(seq 1 "$n"); do
  printf '{"id":"INC-BENCH-%04d","declared_at":"2026-02-05T14:40:00Z","started_at":"2026-02-05T14:32:00Z","window":{"start":"2026-02-05T14:02:00Z","end":"2026-02-05T14:55:00Z"}}' "$i" >"$work/incident.json"
  RUST_LOG=error EVIDENCE_LOCKER__SIGNING__KEY_FILE="$work/key.pem" \
    "$bin" collect --incident "$work/incident.json" --traces-file examples/traces.jsonl.zst --out "$work/store" >/dev/null
done
echo "wrote $n bundles in $(echo "$(date +%s.%N) - $start" | bc) s"
for run in 1 2 3; do
  "$bin" audit --store "$work/store" --trusted-keys "$work/trusted.pem" --format json \
    | python3 -c 'import json,sys; s=json.load(sys.stdin)["summary"]; print(f"audit run {sys.argv[1]}: {s}")' "$run"
done
