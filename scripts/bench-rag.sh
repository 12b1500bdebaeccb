#!/usr/bin/env bash
# Retrieval: quality and speed of collections, on a public corpus and at a million vectors.
#
#   corpus     PostgreSQL 15's manual (Debian package postgresql-doc-15): every section a
#              Markdown document *without its heading*, the heading a question whose answer is
#              that section (scripts/reference/rag_corpus.py), all-MiniLM-L6-v2 embeddings
#   quality    nDCG@10 and recall@10 by document for dense alone, BM25 alone and hybrid at
#              several keyword weights; the HNSW index's recall@10 against exact search
#              (targets: hybrid >= dense; ANN recall >= 0.95)
#   ingest     `airlock ingest` against the pipeline a team would write in Python on the same
#              files, model and threads (onnxruntime + usearch + SQLite,
#              scripts/reference/rag_ingest.py), taking turns; time, chunks/s, and the ratio
#              of times (the chunkers differ, so the corpus is the unit of work)
#   search     p50/p95 of a hybrid search at the corpus, the query's embedding apart
#   1M         a million synthetic 384-d vectors (unit vectors around a thousand topics): build
#              time (every core), file size, memory (peak while building; mapped), and
#              p50/p95/recall@10 on one core at candidate lists of 128 to 1024 (512 is the
#              default; goal: recall@10 >= 0.95 at p95 <= 10 ms)
#
#   --check               300 sections, 40 questions, one ingest round, 20,000 vectors: checks
#                         that every part runs (scripts/test.sh; figures not judged)
#   AIRLOCK_THREADS       threads for embedding, both pipelines (default 2)
#   AIRLOCK_BENCH_ROUNDS  ingest rounds (default 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
threads="${AIRLOCK_THREADS:-2}"
rounds="${AIRLOCK_BENCH_ROUNDS:-2}"
sections=0 questions=400 vectors=1000000 queries=2000 expansions=128,256,512,1024
if [ "$check" = 1 ]; then rounds=1 sections=300 questions=40 vectors=20000 queries=200 expansions=128,512; fi

source scripts/lib/debian.sh
debian_require postgresql-doc-15
manual=/usr/share/doc/postgresql-doc-15/html
models="${AIRLOCK_CACHE:-$HOME/.cache/airlock}/models"
bash scripts/fetch-models.sh >&2
python="$(bash scripts/reference-venv.sh)"
cargo build --release --locked --quiet -p airlock-cli
cargo build --release --locked --quiet -p airlock-rag --example rag_eval --example rag_ann
airlock="$PWD/target/release/airlock"
examples="$PWD/target/release/examples"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== corpus: PostgreSQL manual sections, headings removed"
limit=(); [ "$sections" -gt 0 ] && limit=("$sections")
python3 scripts/reference/rag_corpus.py "$manual" "$work/corpus" "$questions" "${limit[@]}"

export AIRLOCK_DATA="$work/data"
source scripts/lib/bench-registry.sh
bench_registry "$airlock" "$work" all-minilm-l6-v2 >/dev/null
"$python" -c 'import sys; sys.path.insert(0, "scripts/reference"); import bert_onnx; bert_onnx.build(sys.argv[1], sys.argv[2])' \
  "$models/all-minilm-l6-v2" "$work/minilm.onnx"

echo "== ingest: airlock and the Python pipeline on the same files, $threads thread(s), $rounds round(s)"
for round in $(seq "$rounds"); do
  order=(airlock python); [ $((round % 2)) = 0 ] && order=(python airlock)
  for who in "${order[@]}"; do
    if [ "$who" = airlock ]; then
      # A new collection each round: the same files into an existing one would cost a hash each.
      "$airlock" collection create "docs-$round" --embed all-minilm-l6-v2:prod >/dev/null
      started=$EPOCHREALTIME
      "$airlock" ingest "docs-$round" "$work/corpus" --threads "$threads" --json >"$work/ingest.json"
      line="$(python3 -c 'import json, sys; show = json.load(open(sys.argv[1]))
print(json.dumps({"chunks": show["chunks"], "seconds": float(sys.argv[3]) - float(sys.argv[2])}))' \
        <("$airlock" collection show "docs-$round" --json) "$started" "$EPOCHREALTIME")"
      last="docs-$round"
    else
      rm -rf "$work/python-index"
      line="$(PYTHONPATH=scripts/reference "$python" scripts/reference/rag_ingest.py \
        "$models/all-minilm-l6-v2" "$work/minilm.onnx" "$work/corpus" "$work/python-index" "$threads")"
    fi
    echo "{\"pipeline\": \"$who\", \"round\": $round, \"result\": $line}" | tee -a "$work/ingest.jsonl"
  done
done

echo "== quality and search latency at the corpus"
"$examples/rag_eval" "$AIRLOCK_DATA" "$last" "$models/all-minilm-l6-v2" "$work/questions.jsonl" 1 | tee "$work/eval.json"

echo "== $vectors synthetic 384-d vectors: build, map, search on one core"
"$examples/rag_ann" "$vectors" "$queries" "$expansions" "$work" | tee "$work/ann.json"

python3 - "$work/ingest.jsonl" "$work/eval.json" "$work/ann.json" <<'PY'
import json, statistics, sys
ingest = [json.loads(l) for l in open(sys.argv[1])]
evaluation = json.load(open(sys.argv[2]))
ann = json.load(open(sys.argv[3]))
def runs(who):
    done = [r["result"] for r in ingest if r["pipeline"] == who]
    return statistics.median(r["seconds"] for r in done), done[-1]["chunks"]
our_s, our_chunks = runs("airlock")
their_s, their_chunks = runs("python")
print()
print(f"corpus: {evaluation['documents']} documents, {evaluation['chunks']} chunks, "
      f"{evaluation['questions']} questions, collection {evaluation['collection_bytes'] / 2**20:.1f} MiB")
print(f"{'ranking':22} {'nDCG@10':>8} {'recall@10':>10}")
for name, r in evaluation["rankings"].items():
    print(f"{name:22} {r['ndcg_at_10']:8.3f} {r['recall_at_10']:10.3f}")
dense = evaluation["rankings"]["dense"]["ndcg_at_10"]
hybrid = evaluation["rankings"]["hybrid 0.3 (default)"]["ndcg_at_10"]
print(f"hybrid (default) - dense: {hybrid - dense:+.3f} nDCG@10 (target >= 0)")
print(f"ANN recall@10 against exact search: {evaluation['ann_recall_at_10']:.3f} (target >= 0.95)")
print(f"search at the corpus: p50 {evaluation['search_ms']['p50']:.2f} ms, p95 {evaluation['search_ms']['p95']:.2f} ms "
      f"(query embedding apart: p50 {evaluation['embed_query_ms']['p50']:.1f} ms)")
print(f"ingest of the corpus (medians over rounds): airlock {our_s:.1f} s, {our_chunks} chunks, "
      f"{our_chunks / our_s:.1f} chunks/s; Python pipeline {their_s:.1f} s, {their_chunks} chunks, "
      f"{their_chunks / their_s:.1f} chunks/s; airlock takes {our_s / their_s:.2f}x the time")
print(f"{ann['vectors']} vectors: built in {ann['build_seconds']:.0f} s on {ann['build_threads']} threads, "
      f"file {ann['index_file_mib']:.0f} MiB, RSS peak {ann['rss_mib_peak']:.0f} MiB (building), "
      f"{ann['rss_mib_before_mapping']:.0f} MiB before mapping, {ann['rss_mib_mapped_after_searches']:.0f} MiB mapped and searched")
for s in ann["searches"]:
    print(f"  candidates {s['expansion']:4}: p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms, recall@10 {s['recall_at_10']:.3f}")
PY
