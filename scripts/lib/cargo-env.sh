# shellcheck shell=bash
# Environment for the cargo builds of scripts/test.sh and scripts/demo.sh (sourced after
# scripts/setup-test-tools.sh, which installs ccache).
#
# llama.cpp is compiled by up to three cargo builds (clippy, test, release) with identical flags;
# ccache compiles it once. Paths are made relative to each build directory, which all sit at the
# same depth under target/, so the three builds look alike to the cache.
export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
export CCACHE_BASEDIR=/ CCACHE_NOHASHDIR=1
