# shellcheck shell=bash
# The Debian packages airlock's build, tests, benchmarks and demo need, in one place, and the one
# way they are checked and installed. Sourced by scripts/setup-test-tools.sh and by the scripts
# that need a subset (scripts/build-llama-cpp.sh).
#
# A package is present when dpkg says it is installed (`dpkg-query`, status "ii"), never when some
# file or command is found: a file glob once took libclang-cpp14's shared object for libclang-dev.

# package        what needs it
debian_packages=(
  tar            # tests: the bundle is a POSIX tar that GNU tar must list and unpack
  coreutils      # tests, demo: sha256sum -c against SHA256SUMS
  openssl        # tests: keys and signatures cross-checked; verify benchmark's anchor
  curl           # demo: the API call; llama.cpp source download
  python3        # tests: reference verifier, official SDKs, benchmark drivers
  python3-venv   # the tool and reference virtual environments
  g++            # the embedded engine: llama.cpp is C++
  cmake          # the embedded engine: llama.cpp's build
  libclang-dev   # the embedded engine: bindgen generates llama.cpp's bindings with libclang
  libseccomp-dev # the network seal: libseccomp, which builds the seccomp filter
  ccache         # one llama.cpp compile shared by the clippy, test and release builds
  strace         # tests: the network-silence test traces every network call
  iproute2       # tests: brings up loopback in the network-silence test's namespace
  udpcast        # diode benchmark's anchor (udp-sender, udp-receiver)
  postgresql-doc-15  # the retrieval evaluation's corpus (PostgreSQL's HTML manual)
)

# Prints the listed packages (all of them, or the named ones) that dpkg does not have installed.
debian_missing() {
  local want=("$@") pkg status
  [ ${#want[@]} -gt 0 ] || want=("${debian_packages[@]}")
  for pkg in "${want[@]}"; do
    debian_listed "$pkg" || { echo "debian: $pkg is not in scripts/lib/debian.sh's list" >&2; return 2; }
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)"
    [ "${status:0:2}" = "ii" ] || echo "$pkg"
  done
}

debian_listed() {
  local pkg
  for pkg in "${debian_packages[@]}"; do [ "$pkg" = "$1" ] && return 0; done
  return 1
}

# Installs the given packages in one apt-get call; one line on stderr and exit status 2 when apt
# is missing, privileges are missing, or apt fails (its output is kept in a log named there).
debian_install() {
  [ $# -gt 0 ] || return 0
  command -v dpkg-query >/dev/null && command -v apt-get >/dev/null || {
    echo "setup: needs Debian packages $* but this machine has no apt-get/dpkg: install them with its package manager" >&2
    return 2
  }
  local sudo_cmd=() log
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: needs Debian packages $* and root to install them (no sudo here): run as root: apt-get install $*" >&2; return 2; }
    sudo_cmd=(sudo)
  fi
  log="$(mktemp "${TMPDIR:-/tmp}/airlock-apt.XXXXXX.log")"
  echo "setup: installing Debian packages: $*" >&2
  if ! { "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
    local why
    why="$(grep -E '^(E|W):' "$log" | head -n1)"
    [ -n "$why" ] || why="$(tail -n1 "$log")"
    echo "setup: apt-get install $* failed: $why (full output: $log)" >&2
    return 2
  fi
  rm -f "$log"
  local still
  still="$(debian_missing "$@")"
  [ -z "$still" ] || { echo "setup: apt-get reported success but these are still not installed: $still" >&2; return 2; }
}

# Installs whichever of the given listed packages are missing (all listed ones without arguments).
debian_require() {
  local missing
  missing="$(debian_missing "$@")" || return 2
  # shellcheck disable=SC2086
  [ -z "$missing" ] || debian_install $missing
}
