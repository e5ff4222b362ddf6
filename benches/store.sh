#!/usr/bin/env bash
# Benchmark of the S3 store the worker uploads with, against both S3-compatible servers the tests
# use (installed into .venv by scripts/test): the demo bundle, a repeat of it (every object
# already there), and one large file in parts. Prints MiB/s and peak RSS.
#
# Usage: benches/store.sh [LARGE_MIB]   (default 256)
set -euo pipefail
cd "$(dirname "$0")/.."
large=${1:-256}
venv=.venv
for bin in s3s-fs moto_server; do
  [ -x "$venv/bin/$bin" ] || { echo "no $venv/bin/$bin: run scripts/test once" >&2; exit 1; }
done
cargo build --release --quiet --example bench_store

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 not open" >&2; exit 1; }

export AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_EC2_METADATA_DISABLED=true
export RUST_LOG=warn

s3s_port=$(free_port)
mkdir -p "$work/s3s/evidence"   # s3s-fs: a bucket is a directory
"$venv/bin/s3s-fs" --host 127.0.0.1 --port "$s3s_port" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3s" > /dev/null 2>&1 &
pids+=($!)
moto_port=$(free_port)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" > /dev/null 2>&1 &
pids+=($!)
wait_port "$s3s_port"; wait_port "$moto_port"
curl -sf -X PUT "http://127.0.0.1:$moto_port/evidence" > /dev/null   # moto does not check signatures

echo "== s3s-fs 0.14.1 (checks signatures and checksums; files on disk)"
./target/release/examples/bench_store "http://127.0.0.1:$s3s_port" evidence "$large"
echo "== moto 5.2.5 (in memory)"
./target/release/examples/bench_store "http://127.0.0.1:$moto_port" evidence "$large"
