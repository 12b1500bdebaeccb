#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, fetches the pinned
# default models and llama.cpp's tools, then runs formatting and lint checks, every Rust test,
# the verify and import benchmarks (which also check that memory stays bounded), the diode
# benchmark's delivery check, the engine, retrieval, RAG-answer, eval, structured-output and
# confinement benchmarks' smoke runs, the network-silence test (the demo and the official SDKs in a loopback-only
# network namespace, every airlock process under strace), and the server's overhead
# benchmark and bounded load test (64 streaming clients for 60 s; fails on errors other than
# 429s or on memory that does not come back).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 2; }

bash scripts/setup-test-tools.sh
source scripts/lib/cargo-env.sh
# The engine-process tests supervise the llama-server the setup built.
AIRLOCK_LLAMA_SERVER="$(bash scripts/build-llama-cpp.sh)/build/bin/llama-server"
export AIRLOCK_LLAMA_SERVER

# One build from scratch gains nothing from incremental state, which would take a gigabyte.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Tests run side by side, each model on two threads of two cores. OpenMP's worker threads spin
# while they wait, and a spinning thread takes the core another test's model needs: three SDK
# tests together took 428 s spinning, 89 s with waiting threads asleep.
OMP_WAIT_POLICY=PASSIVE cargo test --workspace --locked
echo "== benchmark: airlock verify beside sha256sum and openssl (4 GiB), memory bounded"
bash scripts/bench-verify.sh --check
echo "== benchmark: airlock import beside cp and sha256sum, audit appends with group commit"
bash scripts/bench-import.sh --check
echo "== benchmark: airlock diode beside udpcast on loopback, 0 % and 1 % loss"
bash scripts/bench-diode.sh --check
echo "== benchmark: embedded engine beside llama.cpp and onnxruntime (llama.cpp only if built)"
bash scripts/bench-engine.sh --check
echo "== benchmark: embedded engine, llama-server alone and airlock in front of it (small load)"
bash scripts/bench-engines.sh --check
echo "== benchmark: retrieval quality on the PostgreSQL manual, ingest beside a Python pipeline, 20k vectors"
bash scripts/bench-rag.sh --check
echo "== benchmark: answers from documents against the same questions without retrieval, 1 and 8 callers"
bash scripts/bench-rag-answer.sh --check
echo "== benchmark: airlock eval beside llama-perplexity, airlock quantize beside llama-quantize (small)"
bash scripts/bench-eval.sh --check
echo "== benchmark: constrained decoding beside free generation and llama-server (small)"
bash scripts/bench-structured.sh --check
echo "== benchmark: confinement's cost on verify, import and API requests (small)"
bash scripts/bench-confinement.sh --check
echo "== network silence: the demo and the SDKs in a loopback-only namespace, every airlock process traced"
bash scripts/network-silence.sh
echo "== benchmark and load test: airlock serve (overhead, embeddings/s, 64 clients for 60 s)"
bash scripts/bench-serve.sh
