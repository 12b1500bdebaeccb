#!/usr/bin/env bash
# Benchmark: three ways to serve SmolLM2-135M-Instruct (GGUF Q4_1) under the same load, in the
# same run, taking turns:
#
#   embedded   `airlock serve` on its embedded engine (16 slots of 1024 tokens, 2 threads)
#   llama      llama-server alone (--parallel 16 -c 16384 -t 2), what users would run instead
#   fronted    `airlock serve` in front of a llama-server it starts and supervises (the same
#              settings; prompt caches shared across callers, as llama-server alone does)
#
# Load: 16 streaming clients x 4 requests x 64 generated tokens, greedy, over loopback TCP, a
# different question per request; aggregate tokens/s (from each answer's usage) and time to
# first token. Rounds alternate the servers' order. Then one client sends one-token
# completions through `fronted` and to `llama` alone in turn: the median of the paired
# differences is what airlock adds in front of the process (auth, audit, parsing, the socket
# hop).
#
# Targets: embedded aggregate >= 1.0 x llama and TTFT p50 <= 1.0 x llama's; fronted aggregate
# >= 0.97 x llama, with added p50 latency < 1 ms.
#
#   --check               one round of 4 clients x 2 requests x 16 tokens and 40 paired rounds:
#                         checks that every part runs (scripts/test.sh; figures not judged)
#   AIRLOCK_THREADS       threads for every engine (default 2)
#   AIRLOCK_BENCH_ROUNDS  rounds of the load (default 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
threads="${AIRLOCK_THREADS:-2}"
rounds="${AIRLOCK_BENCH_ROUNDS:-3}"
clients=16 requests=4 tokens=64 paired_rounds=400
if [ "$check" = 1 ]; then rounds=1 clients=4 requests=2 tokens=16 paired_rounds=40; fi
models="${AIRLOCK_CACHE:-$HOME/.cache/airlock}/models"
bash scripts/fetch-models.sh >&2
llama_server="$(bash scripts/build-llama-cpp.sh)/build/bin/llama-server"
cargo build --release --locked --quiet -p airlock-cli
cargo build --release --locked --quiet -p airlock-server --example stream_bench
airlock="$PWD/target/release/airlock"
bench="$PWD/target/release/examples/stream_bench"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A registry with SmolLM2 approved and tagged prod, and a key.
export AIRLOCK_DATA="$work/data"
source scripts/lib/bench-registry.sh
key="$(bench_registry "$airlock" "$work" smollm2)"
# Each airlock server has its own copy of the registry (and so its own audit log).
cp -a "$work/data" "$work/data-fronted"

limits="[limits]
per_key_concurrency = 64
queue = 64"
cat > "$work/embedded.toml" <<TOML
listen = "127.0.0.1:0"
[models.chat]
ref = "smollm2:prod"
slots = 16
context = 1024
threads = $threads
$limits
TOML
cat > "$work/fronted.toml" <<TOML
listen = "127.0.0.1:0"
[models.chat]
ref = "smollm2:prod"
engine = "llama-server"
binary = "$llama_server"
slots = 16
context = 1024
threads = $threads
share_prompt_cache = true
$limits
TOML

# Starts `airlock serve --config NAME.toml` on data directory DATA; its pid goes in pid[NAME].
declare -A pid addr
start_airlock() {
  local name="$1" data="$2"
  AIRLOCK_DATA="$data" "$airlock" serve --config "$work/$name.toml" > "$work/$name.out" 2> "$work/$name.err" &
  pid[$name]=$!
  pids+=($!)
}
# The address a server printed, once it has.
address_of() {
  local name="$1"
  for _ in $(seq 600); do grep -q "serving on" "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  addr[$name]="$(sed -n 's|.*serving on http://\([^/]*\)/v1|\1|p' "$work/$name.out")"
  [ -n "${addr[$name]}" ] || { cat "$work/$name.err" >&2; exit 1; }
}
start_airlock embedded "$work/data"
start_airlock fronted "$work/data-fronted"
address_of embedded
address_of fronted
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
total_context=$((16 * 1024))
"$llama_server" --model "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --host 127.0.0.1 --port "$port" \
  --parallel 16 --ctx-size "$total_context" --threads "$threads" --threads-batch "$threads" \
  --offline --no-webui > "$work/llama.log" 2>&1 &
pid[llama]=$!
pids+=($!)
llama="127.0.0.1:$port"
addr[llama]="$llama"
for _ in $(seq 600); do curl -fs "http://$llama/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://$llama/health" >/dev/null || { tail "$work/llama.log" >&2; exit 1; }

declare -A auth=([embedded]="$key" [llama]="-" [fronted]="$key")
echo "== warm-up (each server: every slot once)"
for s in embedded llama fronted; do "$bench" clients "${addr[$s]}" "${auth[$s]}" 16 1 8 >/dev/null; done

echo "== $clients streaming clients x $requests requests x $tokens tokens, $rounds round(s), order alternating"
order=(embedded llama fronted)
for round in $(seq "$rounds"); do
  [ $((round % 2)) = 0 ] && order=(fronted llama embedded) || order=(embedded llama fronted)
  for s in "${order[@]}"; do
    line="$("$bench" clients "${addr[$s]}" "${auth[$s]}" "$clients" "$requests" "$tokens")"
    echo "{\"server\": \"$s\", \"round\": $round, \"result\": $line}" | tee -a "$work/results.jsonl"
  done
done

echo "== one-token completions through airlock in front of llama-server, and llama-server alone"
"$bench" paired "${addr[fronted]}" "$key" "$llama" - "$paired_rounds" | tee "$work/paired.json"

rss_of() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
child="$(pgrep -P "${pid[fronted]}" | head -n1)"
echo "== memory (RSS, MiB): embedded $(rss_of "${pid[embedded]}"); llama-server alone $(rss_of "${pid[llama]}"); fronted: airlock $(rss_of "${pid[fronted]}") + its llama-server $(rss_of "$child")"

python3 - "$work/results.jsonl" "$work/paired.json" "$check" <<'PY'
import json, statistics, sys
results = [json.loads(l) for l in open(sys.argv[1])]
paired = json.load(open(sys.argv[2]))
check = sys.argv[3] == "1"
failed = [r for r in results if r["result"]["errors"]]
for r in failed:
    print(f"FAILED: {r['server']} round {r['round']}: {r['result']['errors']} errors, first: {r['result']['first_error']}")
def median(server, field):
    return statistics.median(r["result"][field] for r in results if r["server"] == server)
rows = {s: {f: median(s, f) for f in ("tok_s", "ttft_p50_s", "ttft_p95_s", "latency_p50_s")}
        for s in ("embedded", "llama", "fronted")}
print()
print(f"{'':10} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'end p50':>8}   (medians over rounds)")
for s, r in rows.items():
    print(f"{s:10} {r['tok_s']:8.1f} {r['ttft_p50_s']:8.3f}s {r['ttft_p95_s']:8.3f}s {r['latency_p50_s']:7.2f}s")
ll = rows["llama"]
print()
print(f"embedded / llama-server: aggregate {rows['embedded']['tok_s'] / ll['tok_s']:.2f}x (target >= 1.0), "
      f"TTFT p50 {rows['embedded']['ttft_p50_s'] / ll['ttft_p50_s']:.2f}x (target <= 1.0)")
print(f"fronted / llama-server:  aggregate {rows['fronted']['tok_s'] / ll['tok_s']:.2f}x (target >= 0.97), "
      f"TTFT p50 {rows['fronted']['ttft_p50_s'] / ll['ttft_p50_s']:.2f}x")
print(f"added by airlock in front of llama-server, one-token completions: median of {paired['rounds']} paired "
      f"differences {paired['added_p50_ms']:.3f} ms (target < 1 ms; {paired['a_p50_ms']:.2f} against {paired['b_p50_ms']:.2f} ms)")
sys.exit(1 if failed else 0)
PY
