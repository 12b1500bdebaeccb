#!/usr/bin/env bash
# Builds llama.cpp's own tools from the llama_cpp_python sdist on PyPI (which carries
# llama.cpp's full source): llama-bench and llama-batched-bench (the engine benchmark's
# anchors), llama-server (the engine process airlock supervises, and the serving benchmark's
# anchor), llama-perplexity (the eval benchmark's anchor, and the source of the eval golden
# file: scripts/eval-golden.py), llama-quantize (the quantisation benchmark's anchor) and
# libllama.so (which the sdist's Python bindings load, for reference outputs). Cached; prints the
# directory whose build/bin holds them (llama-server is build/bin/llama-server under it).
#
# One line of llama.cpp's source is switched on before the build: llama-perplexity's per-answer
# debug line in multiple_choice_score (tools/perplexity/perplexity.cpp), commented out upstream.
# The eval golden file records each answer's mean log-probability as llama.cpp computes it, and
# upstream prints only the running accuracy; the line is llama.cpp's own, printed to stdout with
# the task and answer indices, full precision and the number of scored tokens so that it parses:
#   airlock-answer<TAB>task<TAB>answer<TAB>mean log-probability<TAB>tokens
#
# Built for the same CPU baseline as airlock's embedded llama.cpp (.cargo/config.toml):
# AVX2/FMA/F16C, GGML_NATIVE off (a native build picks up AMX where the host advertises it
# without being able to run it), OpenMP on. llama-server is built without HTTPS and without its
# web UI (whose prebuilt assets the build would otherwise download): it cannot fetch anything.
# ggml and libllama compile as unity builds (scripts/lib/llama-unity.cmake), which keeps the
# whole build to minutes on two cores.
#
#   --check        builds nothing: says what is missing and exits 1 if anything is
#   AIRLOCK_CACHE  cache root (default: ~/.cache/airlock)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${AIRLOCK_CACHE:-$HOME/.cache/airlock}"
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz"
root="$cache/llama-cpp-python-$version"
build="$root/build"

tools=(llama-bench llama-batched-bench llama-server llama-perplexity llama-quantize)
perplexity_cpp="$root/vendor/llama.cpp/tools/perplexity/perplexity.cpp"
answer_marker=airlock-answer
# A cache built before the per-answer line was switched on counts as not built: the build below
# patches the source and extends it in place (cmake recompiles only perplexity.cpp).
built() {
  local tool
  for tool in "${tools[@]}"; do [ -x "$build/bin/$tool" ] || return 1; done
  [ -f "$build/bin/libllama.so" ] && grep -q "$answer_marker" "$perplexity_cpp" 2>/dev/null
}
# Switches on llama-perplexity's per-answer line (see the header); does nothing when it is on.
enable_answer_line() {
  grep -q "$answer_marker" "$perplexity_cpp" && return 0
  local upstream='//LOG("    <%s> : %g\n", cur_task.mc1.answers[s].c_str(), log_prob/count);'
  if [ "$(grep -cF "$upstream" "$perplexity_cpp")" != 1 ]; then
    echo "llama.cpp: $perplexity_cpp does not have exactly one line" >&2
    echo "  $upstream" >&2
    echo "  (llama-perplexity's per-answer line, which the eval golden file needs)" >&2
    exit 1
  fi
  sed -i 's|//LOG("    <%s> : %g\\n", cur_task\.mc1\.answers\[s\]\.c_str(), log_prob/count);|LOG("airlock-answer\\t%zu\\t%d\\t%.9g\\t%zu\\n", i, s, log_prob/count, count);|' \
    "$perplexity_cpp"
  grep -q "$answer_marker" "$perplexity_cpp" \
    || { echo "llama.cpp: could not switch on the per-answer line in $perplexity_cpp" >&2; exit 1; }
}
if built; then
  [ "${1:-}" = "--check" ] || echo "$root"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "missing: llama.cpp's ${tools[*]} in $build, with llama-perplexity's per-answer line (scripts/build-llama-cpp.sh)"
  exit 1
fi
# shellcheck source=lib/debian.sh
source "$here/lib/debian.sh"
debian_require cmake g++ curl >&2
mkdir -p "$cache/dl"
sdist="$cache/dl/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$sha256" ]; then
  echo "llama.cpp: downloading llama_cpp_python $version (sdist) from PyPI" >&2
  curl -fsSL -o "$sdist.part" "$url"
  mv "$sdist.part" "$sdist"
fi
got="$(sha256sum "$sdist" | cut -d' ' -f1)"
[ "$got" = "$sha256" ] || { echo "llama.cpp: $sdist has SHA-256 $got, pinned $sha256" >&2; exit 1; }
# An earlier build of fewer tools is extended in place; otherwise start from the sdist.
if [ ! -f "$build/CMakeCache.txt" ]; then
  rm -rf "$root"
  mkdir -p "$root"
  tar -xzf "$sdist" -C "$root" --strip-components=1
fi
enable_answer_line
echo "llama.cpp: building ${tools[*]} and libllama.so (several minutes on 2 cores)" >&2
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$root/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON "${launcher[@]}" \
  -DCMAKE_PROJECT_INCLUDE="$here/lib/llama-unity.cmake" \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DGGML_SSE42=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >"$root/cmake.log" 2>&1 || { tail -30 "$root/cmake.log" >&2; exit 1; }
cmake --build "$build" --target "${tools[@]}" llama -j "$(nproc)" >>"$root/cmake.log" 2>&1 \
  || { tail -30 "$root/cmake.log" >&2; exit 1; }
built || { echo "llama.cpp: the build finished without ${tools[*]}" >&2; exit 1; }
echo "$root"
