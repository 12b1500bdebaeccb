#!/usr/bin/env bash
# What the kernel confinement costs: the same work with the seal and fence (the default) and
# with --dangerous-no-sandbox, alternating in one run, medians and their ratio (target: within
# noise, < 2 %).
#
#   verify   airlock verify of a 1 GiB bundle (incompressible weights), 11 times each
#   import   airlock import of the same bundle into a fresh registry, 11 times each; the
#            registry is in memory (/dev/shm where it has room), because this disk's fsync
#            times vary fourfold from one call to the next and would drown what is measured
#   request  API latency through two `airlock serve` processes on the same models, one confined,
#            one not: a one-token chat completion and an embedding, alternating request by
#            request on kept-alive connections, 1,000 each; each server goes
#            first in alternate rounds
#
#   engine   an engine process (a supervised llama-server on SmolLM2) in its box, beside one
#            started by a server run with --dangerous-no-sandbox (no seal, no fence, no box):
#            the engine's start time (launch to ready, from each start's audit entry) over
#            fresh server starts, taking turns, and one-token chat latency through each
#
#   egress   what one connection through the egress allow-list costs: TCP connects to a
#            loopback listener from a process sealed with it as the one allowed destination
#            (the seal's listener checks, records or counts, connects and hands it in) beside
#            the same process unconfined; 5,000 connects per run, runs taking turns, the
#            median of their medians
#
#   --check  a small run for the test suite (64 MiB, 3 rounds, 100 requests, 500 connects)
#   AIRLOCK_BENCH_DIR  where the bundle goes (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size=1 rounds=11 requests=1000
if [ "${1:-}" = "--check" ]; then size=64M rounds=3 requests=100; fi
bash scripts/fetch-models.sh >&2
source scripts/lib/cargo-env.sh
cargo build --release --locked --quiet -p airlock-cli
cargo build --release --locked --quiet -p airlock-confine --example connect_bench
airlock="$PWD/target/release/airlock"
work="$(mktemp -d "${AIRLOCK_BENCH_DIR:-${TMPDIR:-/tmp}}/bench-confinement.XXXXXX")"
servers=()
ram=""
cleanup() {
  for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; done
  rm -rf "$work"
  [ -z "$ram" ] || rm -rf "$ram"
}
trap cleanup EXIT
bash scripts/make-bench-bundle.sh "$airlock" "$work" "$size" >&2
bundle="$work/bench.airlock"
echo "bundle: $(du -m "$bundle" | cut -f1) MiB; $rounds rounds of each, alternating"

# Seconds one run of "$@" takes.
timed() { python3 -c 'import subprocess,sys,time; t=time.perf_counter(); subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL); print(time.perf_counter()-t)' "$@"; }
report() { # NAME FILE_CONFINED FILE_OPEN
  python3 - "$@" <<'PY'
import statistics, sys
name, a, b = sys.argv[1:]
on = [float(x) for x in open(a)]
off = [float(x) for x in open(b)]
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"{name:8} confined {m_on*1000:9.2f} ms   unconfined {m_off*1000:9.2f} ms   ratio {m_on/m_off:.3f}"
      f"   (fastest {min(on)*1000:.2f} / {min(off)*1000:.2f} ms, ratio {min(on)/min(off):.3f})")
PY
}

for i in $(seq "$rounds"); do
  # Each goes first in alternate rounds.
  order=(on off); [ $((i % 2)) -eq 0 ] && order=(off on)
  for mode in "${order[@]}"; do
    flag=(); [ "$mode" = off ] && flag=(--dangerous-no-sandbox)
    timed "$airlock" "${flag[@]}" verify "$bundle" --trust "$work/keys/publisher.pub" >> "$work/verify.$mode"
  done
done
report verify "$work/verify.on" "$work/verify.off"

registry() { # DIR: a registry that trusts the bundle's publisher
  AIRLOCK_DATA="$1" "$airlock" init >/dev/null
  AIRLOCK_DATA="$1" "$airlock" trust add --publisher "$work/keys/publisher.pub" >/dev/null
}
ram=""
bundle_bytes="$(stat -c %s "$bundle")"
if [ -w /dev/shm ] && [ "$(df --output=avail -B1 /dev/shm | tail -1)" -gt $((bundle_bytes * 2)) ]; then
  ram="$(mktemp -d /dev/shm/bench-confinement.XXXXXX)"
fi
into="${ram:-$work}"
for i in $(seq "$rounds"); do
  order=(on off); [ $((i % 2)) -eq 0 ] && order=(off on)
  for mode in "${order[@]}"; do
    rm -rf "$into/reg"; registry "$into/reg"
    flag=(); [ "$mode" = off ] && flag=(--dangerous-no-sandbox)
    AIRLOCK_DATA="$into/reg" timed "$airlock" "${flag[@]}" import "$bundle" >> "$work/import.$mode"
  done
done
rm -rf "$into/reg"
echo "         (import into $([ -n "$ram" ] && echo "memory, /dev/shm" || echo "$work, on disk"))"
report import "$work/import.on" "$work/import.off"

export AIRLOCK_DATA="$work/data"
source scripts/lib/bench-registry.sh
mkdir -p "$work/serving"
key="$(bench_registry "$airlock" "$work/serving" smollm2 all-minilm-l6-v2)"
# Not called in $(...): the server must be started by this shell, so that `servers` holds it
# and the exit trap stops it.
serve_in_background() { # NAME ARGS...: `airlock ARGS...`; sets `addr` to where it serves
  local name="$1"; shift
  # Idle OpenMP threads yield rather than spin, so that one server's pause does not slow the
  # other's turn.
  OMP_WAIT_POLICY=passive "$airlock" "$@" > "$work/$name.out" 2> "$work/$name.err" &
  servers+=($!)
  for _ in $(seq 600); do grep -q "serving on" "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  addr="$(sed -n 's|.*serving on http://\([^/]*\)/v1|\1|p' "$work/$name.out")"
}
models=(--listen 127.0.0.1:0 --model chat=smollm2:prod --model embed=all-minilm-l6-v2:prod)
serve_in_background confined serve "${models[@]}"; confined="$addr"
serve_in_background unconfined --dangerous-no-sandbox serve "${models[@]}"; unconfined="$addr"
[ -n "$confined" ] && [ -n "$unconfined" ] || { cat "$work"/*.err >&2; exit 1; }
python3 - "$confined" "$unconfined" "$key" "$requests" <<'PY'
import http.client, json, statistics, sys, time
confined, unconfined, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
bodies = {
    "chat": ("/v1/chat/completions", json.dumps({"model": "chat", "max_tokens": 1, "temperature": 0,
             "messages": [{"role": "user", "content": "What is the capital of France?"}]})),
    "embed": ("/v1/embeddings", json.dumps({"model": "embed", "input": "The cat sits on the mat."})),
}
conns = {name: http.client.HTTPConnection(*addr.rsplit(":", 1)) for name, addr in
         (("confined", confined), ("unconfined", unconfined))}
def once(name, path, body):
    c = conns[name]
    t = time.perf_counter()
    c.request("POST", path, body, headers)
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"{name} {path}: {r.status}")
    return time.perf_counter() - t
for kind, (path, body) in bodies.items():
    for name in conns:  # warm both
        for _ in range(5): once(name, path, body)
    times = {"confined": [], "unconfined": []}
    for i in range(n):
        # Each goes first half the time.
        for name in (list(conns) if i % 2 == 0 else list(conns)[::-1]):
            times[name].append(once(name, path, body))
    on, off = statistics.median(times["confined"]), statistics.median(times["unconfined"])
    print(f"{kind:8} confined {on*1000:9.3f} ms   unconfined {off*1000:9.3f} ms   ratio {on/off:.3f}   (p50 of {n} requests each)")
PY

# An engine process in its box against one without (the server unconfined, so also without
# the seal and fence, whose own cost is measured above).
llama_server="${AIRLOCK_LLAMA_SERVER:-$(bash scripts/build-llama-cpp.sh)/build/bin/llama-server}"
engine_config() { # ALIAS: a config serving ALIAS from SmolLM2 on a supervised llama-server
  printf '[models.%s]\nref = "smollm2:prod"\nengine = "llama-server"\nbinary = "%s"\nslots = 1\ncontext = 1024\nthreads = 1\n' \
    "$1" "$llama_server" > "$work/$1.toml"
  echo "$work/$1.toml"
}
boxed_config="$(engine_config boxed)"
open_config="$(engine_config open)"
engine_rounds=$((rounds < 5 ? rounds : 5))
for i in $(seq "$engine_rounds"); do
  order=(boxed open); [ $((i % 2)) -eq 0 ] && order=(open boxed)
  for mode in "${order[@]}"; do
    flag=(); [ "$mode" = open ] && flag=(--dangerous-no-sandbox)
    config="$work/$mode.toml"
    serve_in_background "engine-$mode" "${flag[@]}" serve --listen 127.0.0.1:0 --config "$config"
    [ -n "$addr" ] || { cat "$work/engine-$mode.err" >&2; exit 1; }
    kill "${servers[-1]}"; wait "${servers[-1]}" 2>/dev/null || true
  done
done
"$airlock" audit tail -n 1000 --json > "$work/engine-audit.jsonl"
python3 - "$work/engine-audit.jsonl" <<'PY'
import json, statistics, sys
starts = {"boxed": [], "open": []}
for line in open(sys.argv[1]):
    e = json.loads(line)
    d = e.get("details", {})
    if e.get("action") == "engine.start" and e.get("outcome") == "ok" and d.get("alias") in starts:
        starts[d["alias"]].append(float(d["seconds"]))
b, o = statistics.median(starts["boxed"]), statistics.median(starts["open"])
n = len(starts["boxed"])
print(f"engine start  boxed {b*1000:9.1f} ms   unboxed {o*1000:9.1f} ms   ratio {b/o:.3f}   (median of {n} starts each)")
PY
serve_in_background engine-boxed serve --listen 127.0.0.1:0 --config "$boxed_config"; boxed="$addr"
serve_in_background engine-open --dangerous-no-sandbox serve --listen 127.0.0.1:0 --config "$open_config"
open="$addr"
[ -n "$boxed" ] && [ -n "$open" ] || { cat "$work"/engine-*.err >&2; exit 1; }
python3 - "$boxed" "$open" "$key" "$requests" <<'PY'
import http.client, json, statistics, sys, time
boxed, unboxed, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
conns = {"boxed": http.client.HTTPConnection(*boxed.rsplit(":", 1)),
         "open": http.client.HTTPConnection(*unboxed.rsplit(":", 1))}
def once(name):
    body = json.dumps({"model": name, "max_tokens": 1, "temperature": 0,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    c = conns[name]
    t = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, headers)
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"{name}: {r.status}")
    return time.perf_counter() - t
for name in conns:
    for _ in range(5): once(name)
times = {"boxed": [], "open": []}
for i in range(n):
    for name in (list(conns) if i % 2 == 0 else list(conns)[::-1]):
        times[name].append(once(name))
b, o = statistics.median(times["boxed"]), statistics.median(times["open"])
print(f"engine chat   boxed {b*1000:9.3f} ms   unboxed {o*1000:9.3f} ms   ratio {b/o:.3f}   (p50 of {n} requests each)")
PY

# One allowed connection, sealed, against one unconfined.
connects=$((requests * 5))
for i in $(seq "$rounds"); do
  order=(sealed open); [ $((i % 2)) -eq 0 ] && order=(open sealed)
  for mode in "${order[@]}"; do
    target/release/examples/connect_bench "$mode" "$connects" >> "$work/connects.jsonl"
  done
done
python3 - "$work/connects.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
p50 = {m: statistics.median(r["p50_us"] for r in runs if r["mode"] == m) for m in ("sealed", "open")}
p99 = {m: statistics.median(r["p99_us"] for r in runs if r["mode"] == m) for m in ("sealed", "open")}
counted = min(r["counted"] for r in runs if r["mode"] == "sealed")
recorded = max(r["recorded"] for r in runs if r["mode"] == "sealed")
n = runs[0]["connects"]
assert counted >= n, f"only {counted} of {n} allowed connections were counted"
print(f"egress   sealed {p50['sealed']:9.1f} us   unconfined {p50['open']:9.1f} us   ratio {p50['sealed']/p50['open']:.2f}   "
      f"(p50 of {n} connects per run; p99 {p99['sealed']:.1f} / {p99['open']:.1f} us; all counted, {recorded} recorded one by one)")
PY
