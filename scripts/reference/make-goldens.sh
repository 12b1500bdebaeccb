#!/usr/bin/env bash
# Regenerates the engine's golden files (crates/airlock-engine/tests/golden/) from reference
# implementations. Run once when a reference or a model changes; the results are committed
# with their provenance inside each file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/fetch-models.sh >&2
python="$(bash scripts/reference-venv.sh)"
llama_root="$(bash scripts/build-llama-cpp.sh)"
models="${AIRLOCK_CACHE:-$HOME/.cache/airlock}/models"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p crates/airlock-engine/tests/golden
"$python" scripts/reference/make_goldens.py --models "$models" --llama-root "$llama_root" \
  --out crates/airlock-engine/tests/golden --work "$work"
