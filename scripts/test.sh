#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, fetches the pinned
# default models and llama.cpp's tools, then runs formatting and lint checks, every Rust test,
# the verify and import benchmarks (which also check that memory stays bounded), the diode
# benchmark's delivery check, the engine, retrieval, RAG-answer, eval, structured-output and
# confinement benchmarks' smoke runs, the network-silence test (the demo and the official SDKs in a loopback-only
# network namespace, every airlock process under strace), and the server's overhead
# benchmark and bounded load test (64 streaming clients for 60 s; fails on errors other than
# 429s or on memory that does not come back). Each step prints its time, and fails if it
# leaves a process running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 2; }

# Each step says how long it took, and the run ends with the list: the suite has a time budget,
# and a step that grows shows here first.
timings=()
# Processes a step may start: this checkout's airlock builds and test binaries, llama.cpp's
# tools, the benchmarks' servers. Each step must stop what it started, on every way out.
ours() { pgrep -f -- "$PWD/target/(debug|release)/|llama-server|llama-bench|udp-sender|udp-receiver" | sort || true; }
step() { # TITLE COMMAND...: run COMMAND under a heading, record its wall time, and fail if
         # it left a process of ours running
  local title="$1" start=$SECONDS before left; shift
  echo "== $title"
  before="$(ours)"
  "$@"
  timings+=("$(printf '%6ds  %s' $((SECONDS - start)) "$title")")
  echo "== $((SECONDS - start)) s: $title"
  for _ in $(seq 50); do
    left="$(comm -13 <(echo "$before") <(ours))"
    [ -n "$left" ] || return 0
    sleep 0.1
  done
  echo "== $title left these running:" >&2
  # shellcheck disable=SC2086
  ps -o pid,ppid,etime,args -p $left >&2 || true
  kill $left 2>/dev/null || true
  return 1
}
# Also when a step fails, so that a failed run shows where its time went.
trap 'echo "== time per step (total $SECONDS s):"; printf "%s\n" "${timings[@]}"' EXIT

step "setup: system packages, llama.cpp tools, pinned models" bash scripts/setup-test-tools.sh
source scripts/lib/cargo-env.sh
# The engine-process tests supervise the llama-server the setup built.
AIRLOCK_LLAMA_SERVER="$(bash scripts/build-llama-cpp.sh)/build/bin/llama-server"
export AIRLOCK_LLAMA_SERVER

# One build from scratch gains nothing from incremental state, which would take a gigabyte.
export CARGO_INCREMENTAL=0

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# Tests run side by side, each model on two threads of two cores. OpenMP's worker threads spin
# while they wait, and a spinning thread takes the core another test's model needs: three SDK
# tests together took 428 s spinning, 89 s with waiting threads asleep.
step "cargo test" env OMP_WAIT_POLICY=PASSIVE cargo test --workspace --locked
step "benchmark: airlock verify beside sha256sum and openssl (1 GiB), memory bounded" bash scripts/bench-verify.sh --check
step "benchmark: airlock import beside cp and sha256sum, audit appends with group commit" bash scripts/bench-import.sh --check
step "benchmark: airlock diode beside udpcast on loopback, 0 % and 1 % loss" bash scripts/bench-diode.sh --check
step "benchmark: embedded engine beside llama.cpp and onnxruntime (llama.cpp only if built)" bash scripts/bench-engine.sh --check
step "benchmark: embedded engine, llama-server alone and airlock in front of it (small load)" bash scripts/bench-engines.sh --check
step "benchmark: retrieval quality on the PostgreSQL manual, ingest beside a Python pipeline, 20k vectors" bash scripts/bench-rag.sh --check
step "benchmark: answers from documents against the same questions without retrieval, 1 and 8 callers" bash scripts/bench-rag-answer.sh --check
step "benchmark: airlock eval beside llama-perplexity, airlock quantize beside llama-quantize (small)" bash scripts/bench-eval.sh --check
step "benchmark: constrained decoding beside free generation and llama-server (small)" bash scripts/bench-structured.sh --check
step "benchmark: confinement's cost on verify, import and API requests (small)" bash scripts/bench-confinement.sh --check
step "network silence: the demo and the SDKs in a loopback-only namespace, every airlock process traced" bash scripts/network-silence.sh
step "benchmark and load test: airlock serve (overhead, embeddings/s, 64 clients for 60 s)" bash scripts/bench-serve.sh
