#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: the OpenSSF Model Signing reference tool
# (model-signing with pyopenssl) and the official openai and anthropic SDKs (the server's
# end-to-end tests), all from PyPI, in a virtual environment in the cache, and from
# Debian when missing: GNU tar, sha256sum, OpenSSL, udpcast (the diode benchmark's anchor), and
# cmake, a C++ compiler, libclang and ccache (the embedded engine builds llama.cpp from source),
# and curl (the demo calls the server with it).
#
#   AIRLOCK_CACHE  cache root (default: ~/.cache/airlock)
set -euo pipefail
cache="${AIRLOCK_CACHE:-$HOME/.cache/airlock}"
venv="$cache/tools-venv"
mkdir -p "$cache"

missing=()
for tool in tar sha256sum openssl python3 udp-sender cmake c++ ccache curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# bindgen finds libclang by its shared object, not by a command.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "tools: installing ${missing[*]} from apt"
  pkgs=()
  for t in "${missing[@]}"; do
    case "$t" in
      sha256sum) pkgs+=(coreutils) ;; udp-sender) pkgs+=(udpcast) ;; python3) pkgs+=(python3 python3-venv) ;;
      c++) pkgs+=(g++) ;; libclang) pkgs+=(libclang-dev) ;; *) pkgs+=("$t") ;;
    esac
  done
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/model_signing" ] || ! "$venv/bin/python" -c "import model_signing, OpenSSL" 2>/dev/null; then
  echo "tools: installing model-signing and pyopenssl into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "model-signing==1.1.1" "pyopenssl>=25"
fi
sdks=("openai==3.54.0" "anthropic==2.12.0")
if ! "$venv/bin/python" -c "import openai, anthropic, sys; sys.exit(openai.__version__ != '3.54.0' or anthropic.__version__ != '2.12.0')" 2>/dev/null; then
  echo "tools: installing ${sdks[*]} into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${sdks[@]}"
fi
echo "tools: model_signing $("$venv/bin/pip" show model-signing 2>/dev/null | sed -n 's/^Version: //p') ready in $venv"
