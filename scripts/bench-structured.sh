#!/usr/bin/env bash
# Benchmark: what constrained decoding costs. SmolLM2-135M-Instruct (GGUF Q4_1), greedy, one
# client, the same prompts, in the same run, taking turns:
#
#   free        `airlock serve` (embedded engine), no response_format
#   schema      `airlock serve`, response_format json_schema (the grammar applied at every step)
#   llama       llama-server alone, the same schema through its own response_format: what users
#               would run instead
#
# Each prompt asks for a JSON object, so the free answers are of the same kind. Generation
# tokens/s = completion tokens after the first / seconds from the first streamed token to the
# last (the prompt's decoding left out), summed over the prompts; rounds alternate the order.
# Targets: schema >= 0.9 x free, schema >= 1.0 x llama.
#
# Then what several choices cost: four sampled answers (48 tokens each) to one long prompt
# (about 880 tokens, new in every round so no cache holds it), as one `n = 4` request to
# airlock, which decodes the prompt once and copies it to the other three slots, and as four
# concurrent requests to llama-server (`--parallel 4`), which cannot ask for several choices;
# and one answer alone on airlock. Seconds to all four answers, best of the rounds.
#
#   --check           one round of 4 prompts: checks that every part runs and that every
#                     constrained answer parses and matches (scripts/test.sh; figures not judged)
#   AIRLOCK_THREADS   threads for both engines (default 2)
#   AIRLOCK_BENCH_ROUNDS  rounds (default 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
threads="${AIRLOCK_THREADS:-2}"
rounds="${AIRLOCK_BENCH_ROUNDS:-3}"
prompts=12
if [ "$check" = 1 ]; then rounds=1 prompts=4; fi
models="${AIRLOCK_CACHE:-$HOME/.cache/airlock}/models"
bash scripts/fetch-models.sh >&2
llama_server="$(bash scripts/build-llama-cpp.sh)/build/bin/llama-server"
cargo build --release --locked --quiet -p airlock-cli
airlock="$PWD/target/release/airlock"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

export AIRLOCK_DATA="$work/data"
source scripts/lib/bench-registry.sh
key="$(bench_registry "$airlock" "$work" smollm2)"
cat > "$work/serve.toml" <<TOML
listen = "127.0.0.1:0"
[models.chat]
ref = "smollm2:prod"
slots = 4
context = 2048
threads = $threads
TOML
"$airlock" serve --config "$work/serve.toml" > "$work/serve.out" 2> "$work/serve.err" &
pids+=($!)
for _ in $(seq 600); do grep -q "serving on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's|.*serving on http://\([^/]*\)/v1|\1|p' "$work/serve.out")"
[ -n "$addr" ] || { cat "$work/serve.err" >&2; exit 1; }

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$llama_server" --model "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --host 127.0.0.1 --port "$port" \
  --parallel 4 --ctx-size 8192 --threads "$threads" --threads-batch "$threads" \
  --offline --no-webui > "$work/llama.log" 2>&1 &
pids+=($!)
llama="127.0.0.1:$port"
for _ in $(seq 600); do curl -fs "http://$llama/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://$llama/health" >/dev/null || { tail "$work/llama.log" >&2; exit 1; }

python3 - "$addr" "$key" "$llama" "$rounds" "$prompts" "$check" <<'PY'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

airlock, key, llama, rounds, prompts, check = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "category": {"enum": ["city", "country", "animal", "food", "object"]},
        "facts": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "rating": {"type": "integer", "minimum": 1, "maximum": 10},
        "details": {
            "type": "object",
            "properties": {"origin": {"type": "string"}, "popular": {"type": "boolean"}},
            "required": ["origin", "popular"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "category", "facts", "rating", "details"],
    "additionalProperties": False,
}
TOPICS = ["Paris", "Japan", "the cat", "pizza", "a bicycle", "Rome", "the owl", "bread",
          "Canada", "a piano", "the whale", "sushi"][:prompts]
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}


def ask(host, auth, topic, constrained):
    """Streams one answer; returns its completion tokens after the first and the seconds from
    the first token to the last (generation alone, without the prompt's decoding)."""
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": f"Describe {topic} as a JSON object with a name, category, three facts, a rating and details."}],
        "temperature": 0, "max_tokens": 160,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if constrained:
        body["response_format"] = FORMAT
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    request = urllib.request.Request(f"http://{host}/v1/chat/completions", json.dumps(body).encode(), headers)
    first = last = None
    pieces, usage, finish = [], None, None
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                finish = choice.get("finish_reason") or finish
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces.append(content)
    text = "".join(pieces)
    # A complete constrained answer must parse and match (one cut by max_tokens cannot).
    if constrained and finish == "stop":
        value = json.loads(text)
        assert set(value) == set(SCHEMA["required"]), text
        assert value["category"] in SCHEMA["properties"]["category"]["enum"], text
        assert 1 <= value["rating"] <= 10, text
    return usage["completion_tokens"] - 1, last - first


SERVERS = {"free": (airlock, key, False), "schema": (airlock, key, True), "llama": (llama, None, True)}
for name, (host, auth, constrained) in SERVERS.items():  # warm-up
    ask(host, auth, "tea", constrained)
totals = {name: [] for name in SERVERS}
for round_ in range(rounds):
    order = list(SERVERS) if round_ % 2 == 0 else list(reversed(SERVERS))
    for name in order:
        host, auth, constrained = SERVERS[name]
        tokens = seconds = 0
        for topic in TOPICS:
            t, s = ask(host, auth, topic, constrained)
            tokens += t
            seconds += s
        totals[name].append(tokens / seconds)
        print(json.dumps({"server": name, "round": round_ + 1, "tokens": tokens, "seconds": round(seconds, 3), "tok_s": round(tokens / seconds, 1)}))
best = {name: max(v) for name, v in totals.items()}
print()
print(f"generation tok/s (best of {rounds} round(s), {len(TOPICS)} prompts, greedy, one client):")
for name, value in best.items():
    print(f"  {name:7} {value:8.1f}")
print(f"constrained / unconstrained (airlock): {best['schema'] / best['free']:.2f}x (target >= 0.9)")
print(f"constrained airlock / constrained llama-server: {best['schema'] / best['llama']:.2f}x (target >= 1.0)")

POLICY = " ".join(
    f"Rule {i}: records of kind {i} are kept for {i + 2} years, reviewed by two officers, and "
    f"never copied outside the archive without a signed request."
    for i in range(1, 25)
)
QUESTION = "List, one per line and numbered, forty things an officer must check before releasing a record."


def choices_request(host, auth, nonce, n, seed):
    """One request of `n` sampled answers; its completion tokens and prompt tokens."""
    body = {
        "model": "chat",
        "messages": [{"role": "system", "content": f"Archive {nonce}. {POLICY}"},
                     {"role": "user", "content": QUESTION}],
        "temperature": 0.8, "seed": seed, "max_tokens": 48,
    }
    if n > 1:
        body["n"] = n
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    request = urllib.request.Request(f"http://{host}/v1/chat/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.load(response)
    assert len(answer["choices"]) == n, answer
    return answer["usage"]["completion_tokens"], answer["usage"]["prompt_tokens"]


def four_at_once(host, nonce):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda seed: choices_request(host, None, nonce, 1, seed), range(4)))
    return sum(tokens for tokens, _ in answers), answers[0][1]


def timed(run):
    start = time.perf_counter()
    tokens, prompt_tokens = run()
    return time.perf_counter() - start, tokens, prompt_tokens


CHOICES = {
    "airlock n=4": lambda nonce: choices_request(airlock, key, nonce, 4, 7),
    "llama 4 requests": lambda nonce: four_at_once(llama, nonce),
    "airlock n=1": lambda nonce: choices_request(airlock, key, nonce, 1, 7),
}
for name, run in CHOICES.items():  # warm-up
    run(f"warm-{name}")
seconds = {name: [] for name in CHOICES}
prompt_tokens = 0
for round_ in range(rounds):
    order = list(CHOICES) if round_ % 2 == 0 else list(reversed(CHOICES))
    for name in order:
        took, tokens, prompt_tokens = timed(lambda: CHOICES[name](f"{round_}-{name}-{time.time_ns()}"))
        seconds[name].append((took, tokens))
        print(json.dumps({"choices": name, "round": round_ + 1, "completion_tokens": tokens, "seconds": round(took, 3)}))
best = {name: min(v)[0] for name, v in seconds.items()}
print()
print(f"seconds to the answers (best of {rounds} round(s), a {prompt_tokens}-token prompt, at most 48 tokens each):")
for name, value in best.items():
    tokens = min(seconds[name])[1]
    print(f"  {name:17} {value:7.2f}  ({tokens} completion tokens)")
print(f"four answers, llama-server / airlock n=4: {best['llama 4 requests'] / best['airlock n=4']:.2f}x")
print(f"airlock: four answers cost {best['airlock n=4'] / best['airlock n=1']:.2f}x one")
PY
