#!/usr/bin/env bash
# Creates (once) the Python environment of reference implementations: onnxruntime, Hugging
# Face tokenizers and transformers (tokenizers only, no torch), gguf and the llama.cpp Python
# bindings' dependencies, pinned in scripts/reference/requirements.txt. Prints its python.
#
#   --check        installs nothing: says so and exits 1 if the environment is missing or stale
#   AIRLOCK_CACHE  cache root (default: ~/.cache/airlock)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${AIRLOCK_CACHE:-$HOME/.cache/airlock}"
venv="$cache/ref-venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/reference/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "${1:-}" = "--check" ]; then
    echo "missing: Python reference environment $venv (scripts/reference/requirements.txt)"
    exit 1
  fi
  echo "reference: installing scripts/reference/requirements.txt into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/reference/requirements.txt" >&2 \
    || { echo "reference: pip install into $venv failed (is PyPI reachable?)" >&2; exit 2; }
  echo "$want" >"$stamp"
fi
[ "${1:-}" = "--check" ] || echo "$venv/bin/python"
