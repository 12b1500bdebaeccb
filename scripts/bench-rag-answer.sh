#!/usr/bin/env bash
# Benchmark: what answering from documents costs. One `airlock serve` runs SmolLM2-135M-Instruct
# (GGUF Q4_1) twice: as `plain`, and as `manual`, the same model with
# rag = { collections = ["manual"], top_k = 3, max_context_tokens = 600 } over sections of
# PostgreSQL's manual (scripts/reference/rag_corpus.py). The same questions go to both, streamed,
# greedy, taking turns, at 1 and at 8 concurrent callers (each request a question not asked
# before, so that no prompt cache helps either side); then to the collection's search
# endpoint alone, which is retrieval end to end (HTTP, auth, audit, query embedding, hybrid
# search at the caller's clearance).
#
# Reported: time to first token and total latency (p50, p95) of `manual` against `plain`, their
# ratio, the prompt length each sent to the model, and retrieval's share of the RAG answer's
# time to first token (search p50 / RAG TTFT p50). The rest of the difference is prefill of the
# sources the prompt carries.
#
#   --check               300 sections, 2 requests per caller, 16 tokens: checks that every
#                         part runs (scripts/test.sh; figures not judged)
#   AIRLOCK_THREADS       threads for the engines (default 2)
#   AIRLOCK_BENCH_ROUNDS  rounds (default 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
threads="${AIRLOCK_THREADS:-2}"
rounds="${AIRLOCK_BENCH_ROUNDS:-2}"
sections=1000 requests=8 tokens=48
if [ "$check" = 1 ]; then rounds=1 sections=300 requests=2 tokens=16; fi
# Eight for the warm-up, then new ones for every round and number of callers.
questions=$((8 + rounds * 9 * requests))

source scripts/lib/debian.sh
debian_require postgresql-doc-15
manual=/usr/share/doc/postgresql-doc-15/html
bash scripts/fetch-models.sh >&2
cargo build --release --locked --quiet -p airlock-cli
cargo build --release --locked --quiet -p airlock-server --example stream_bench
airlock="$PWD/target/release/airlock"
bench="$PWD/target/release/examples/stream_bench"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "== corpus: $sections sections of the PostgreSQL manual, $questions questions"
python3 scripts/reference/rag_corpus.py "$manual" "$work/corpus" "$questions" "$sections" >/dev/null
export AIRLOCK_DATA="$work/data"
source scripts/lib/bench-registry.sh
key="$(bench_registry "$airlock" "$work" smollm2 all-minilm-l6-v2)"
"$airlock" collection create manual --embed all-minilm-l6-v2:prod >/dev/null
"$airlock" ingest manual "$work/corpus" --threads "$threads" --json >/dev/null
python3 - "$work" "$rounds" "$requests" <<'PY'
import sys
work, rounds, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lines = open(f"{work}/questions.jsonl").read().splitlines()
def take(name, n):
    global lines
    assert len(lines) >= n, f"{len(lines)} questions left, {n} needed"
    open(f"{work}/{name}.jsonl", "w").write("\n".join(lines[:n]) + "\n")
    lines = lines[n:]
take("warm", 8)
for r in range(1, rounds + 1):
    for callers in (1, 8):
        take(f"q-{r}-{callers}", callers * requests)
PY

cat > "$work/airlock.toml" <<TOML
listen = "127.0.0.1:0"
[models.plain]
ref = "smollm2:prod"
slots = 8
context = 2048
threads = $threads
[models.manual]
ref = "smollm2:prod"
slots = 8
context = 2048
threads = $threads
rag = { collections = ["manual"], top_k = 3, max_context_tokens = 600 }
[limits]
per_key_concurrency = 64
queue = 64
TOML
"$airlock" serve --config "$work/airlock.toml" >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
for _ in $(seq 600); do grep -q "serving on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's|.*serving on http://\([^/]*\)/v1.*|\1|p' "$work/serve.out")"
[ -n "$addr" ] || { cat "$work/serve.err" >&2; exit 1; }

echo "== warm-up"
"$bench" ask "$addr" "$key" plain "$work/warm.jsonl" 8 1 8 >/dev/null
"$bench" ask "$addr" "$key" manual "$work/warm.jsonl" 8 1 8 >/dev/null

echo "== $rounds round(s), order alternating; $requests requests per caller, $tokens tokens each"
: >"$work/results.jsonl"
for round in $(seq "$rounds"); do
  for callers in 1 8; do
    order=(plain manual search); [ $((round % 2)) = 0 ] && order=(search manual plain)
    for what in "${order[@]}"; do
      if [ "$what" = search ]; then
        line="$("$bench" search "$addr" "$key" manual "$work/q-$round-$callers.jsonl" "$callers" "$requests")"
      else
        line="$("$bench" ask "$addr" "$key" "$what" "$work/q-$round-$callers.jsonl" "$callers" "$requests" "$tokens")"
      fi
      echo "{\"round\": $round, \"callers\": $callers, \"what\": \"$what\", \"result\": $line}" | tee -a "$work/results.jsonl"
    done
  done
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
errors = sum(r["result"]["errors"] for r in rows)
def med(what, callers, field):
    return statistics.median(r["result"][field] for r in rows if r["what"] == what and r["callers"] == callers)
print("== summary (medians over rounds; seconds)")
for callers in (1, 8):
    plain_ttft, rag_ttft = med("plain", callers, "ttft_p50_s"), med("manual", callers, "ttft_p50_s")
    plain_total, rag_total = med("plain", callers, "latency_p50_s"), med("manual", callers, "latency_p50_s")
    search = med("search", callers, "latency_p50_s")
    print(f"{callers} caller(s): TTFT p50 plain {plain_ttft:.3f}, RAG {rag_ttft:.3f} ({rag_ttft / plain_ttft:.2f}x); "
          f"p95 plain {med('plain', callers, 'ttft_p95_s'):.3f}, RAG {med('manual', callers, 'ttft_p95_s'):.3f}")
    print(f"  total p50 plain {plain_total:.3f}, RAG {rag_total:.3f} ({rag_total / plain_total:.2f}x); "
          f"prompt tokens plain {med('plain', callers, 'prompt_tokens_mean'):.0f}, RAG {med('manual', callers, 'prompt_tokens_mean'):.0f}")
    print(f"  retrieval alone (search endpoint) p50 {search * 1e3:.1f} ms, p95 {med('search', callers, 'latency_p95_s') * 1e3:.1f} ms: "
          f"{100 * search / rag_ttft:.1f} % of the RAG answer's time to first token")
print(f"errors: {errors}")
sys.exit(1 if errors else 0)
PY
