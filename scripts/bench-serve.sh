#!/usr/bin/env bash
# Benchmark and load test of `airlock serve` on loopback, with the real default models.
#
#   overhead  the same one-token completion through HTTP (routing, auth, audit with its
#             fsync, JSON) and straight into the same loaded engine, alternating, 1000 rounds:
#             the difference of the medians is the server's own cost (target < 1 ms); then
#             /v1/embeddings requests/s beside in-process embedding calls.
#   load      64 streaming chat clients for 60 s against a separate `airlock serve` process,
#             every fourth hanging up mid-answer: p50/p99 latency, time to first token,
#             aggregate tokens/s, and the server's RSS before, at peak and after. Fails on any
#             error other than a 429, or if memory does not come back to its baseline.
#
#   AIRLOCK_LOAD_CLIENTS  clients (default 64; 0 skips the load test)
#   AIRLOCK_LOAD_SECONDS  duration (default 60)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
clients="${AIRLOCK_LOAD_CLIENTS:-64}"
seconds="${AIRLOCK_LOAD_SECONDS:-60}"
bash scripts/fetch-models.sh >&2
cargo build --release --locked --quiet -p airlock-cli
cargo build --release --locked --quiet -p airlock-server --example serve_bench
airlock="$PWD/target/release/airlock"
bench="$PWD/target/release/examples/serve_bench"
work="$(mktemp -d)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export AIRLOCK_DATA="$work/data"

# A registry with both models approved and tagged prod, and a key.
source scripts/lib/bench-registry.sh
key="$(bench_registry "$airlock" "$work" smollm2 all-minilm-l6-v2)"

echo "== server overhead (in-process server, same engine)"
"$bench" overhead "$AIRLOCK_DATA" "$key"
[ "$clients" -gt 0 ] || exit 0

echo
echo "== load test"
cat > "$work/airlock.toml" <<TOML
listen = "127.0.0.1:0"
[models.chat]
ref = "smollm2:prod"
slots = 16
context = 1024
[limits]
per_key_concurrency = $clients
queue = 64
TOML
"$airlock" serve --config "$work/airlock.toml" > "$work/serve.out" 2> "$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q "serving on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's|.*serving on http://\([^/]*\)/v1|\1|p' "$work/serve.out")"
[ -n "$addr" ] || { cat "$work/serve.err" >&2; exit 1; }
status=0
"$bench" load "$addr" "$key" "$server" "$clients" "$seconds" || status=$?
kill "$server"; wait "$server" 2>/dev/null || true; server=""
"$airlock" audit verify >/dev/null
closed="$("$airlock" audit tail -n 100000 --json | grep -c '"status":499' || true)"
echo "  audit log verifies; $closed requests recorded as closed by the client (status 499)"
exit "$status"
