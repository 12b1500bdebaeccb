#!/usr/bin/env bash
# Benchmark: `airlock import` of a 2 GiB bundle beside `cp` and `sha256sum` of the same
# bundle, in the same run, on the same disk. Import copies the bundle once into the blob
# store while hashing it and syncs it to disk, so it is compared with a plain `cp` (page
# cache only), with `cp` + `sync` (durable, like import), and with `cp` then `sha256sum`
# (what an operator would otherwise do). Also reports import's peak RSS, and durable
# audit appends per second from 8 concurrent writers (group commit) with the sync count.
#
#   --check            exit non-zero if import's peak RSS reaches 64 MiB; a 1 GiB bundle
#                      unless AIRLOCK_BENCH_GIB says otherwise
#   AIRLOCK_BENCH_DIR  scratch directory (default: ~/.cache/airlock/bench-import; needs twice
#                      the payload free, else the bundle shrinks to fit: see make-bench-bundle.sh)
#   AIRLOCK_BENCH_GIB  bundle payload size in GiB (default 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
# The check is of memory, which must not grow with the bundle: 1 GiB shows it as well as
# 2 GiB, in a fraction of the time it takes to make the bundle.
gib="${AIRLOCK_BENCH_GIB:-2}"; [ "$check" = 1 ] && [ -z "${AIRLOCK_BENCH_GIB:-}" ] && gib=1
dir="${AIRLOCK_BENCH_DIR:-${AIRLOCK_CACHE:-$HOME/.cache/airlock}/bench-import}"
cargo build --release --locked --quiet
airlock="$PWD/target/release/airlock"
rm -rf "$dir" && mkdir -p "$dir"
trap 'chmod -R u+w "$dir" 2>/dev/null; rm -rf "$dir"' EXIT
bash scripts/make-bench-bundle.sh "$airlock" "$dir" "$gib"

python3 - "$airlock" "$dir" "$check" <<'PY'
import os, shutil, subprocess, sys, time
airlock, d, check = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
bundle = f"{d}/bench.airlock"
size = os.path.getsize(bundle)
mb = size / 1e6
subprocess.run(["cat", bundle], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
env = dict(os.environ)

def sh(cmd, **kw):
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, **kw)

def timed(setup, cmd, cleanup, runs=3):
    times = []
    for _ in range(runs):
        setup()
        sh(["sync"])
        t = time.perf_counter()
        sh(cmd, env=env)
        times.append(time.perf_counter() - t)
        cleanup()
    return min(times)

def fresh_registry():
    data = f"{d}/data"
    if os.path.exists(data):
        subprocess.run(["chmod", "-R", "u+w", data], check=True)
        shutil.rmtree(data)
    env["AIRLOCK_DATA"] = data
    sh([airlock, "init"], env=env)
    sh([airlock, "trust", "add", "--publisher", f"{d}/keys/publisher.pub"], env=env)

def rm(path):
    def go():
        if os.path.exists(path):
            os.remove(path)
    return go

nothing = lambda: None
copy = f"{d}/copy.airlock"
t_cp = timed(nothing, ["cp", bundle, copy], rm(copy))
t_cp_sync = timed(nothing, ["sh", "-c", f"cp {bundle} {copy} && sync {copy}"], rm(copy))
t_sha = timed(nothing, ["sha256sum", bundle], nothing)
t_cp_sha = timed(nothing, ["sh", "-c", f"cp {bundle} {copy} && sha256sum {copy}"], rm(copy))
t_import = timed(fresh_registry, [airlock, "import", bundle], nothing)

fresh_registry()
pid = os.fork()
if pid == 0:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1); os.dup2(devnull, 2)
    os.execve(airlock, [airlock, "import", bundle], env)
_, status, usage = os.wait4(pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit("import failed")
rss = usage.ru_maxrss

print(f"bundle: {size / 2**30:.2f} GiB, {os.cpu_count()} cores, page cache warm, destination on the same disk")
print(f"{'command':<34}{'seconds':>10}{'MB/s':>10}{'import / it':>14}")
for name, t in [("airlock import (hash+copy+fsync)", t_import), ("cp", t_cp), ("cp && sync", t_cp_sync),
                ("sha256sum", t_sha), ("cp && sha256sum", t_cp_sha)]:
    print(f"{name:<34}{t:>10.3f}{mb / t:>10.0f}{t_import / t:>14.2f}")
print(f"target: import <= 1.2 x cp. Against plain cp: {t_import / t_cp:.2f}; against durable cp+sync: {t_import / t_cp_sync:.2f}")
print(f"airlock import peak RSS: {rss / 1024:.1f} MiB (bound: 64 MiB)")
if check and rss >= 64 * 1024:
    sys.exit(f"FAIL: import peak RSS {rss / 1024:.1f} MiB >= 64 MiB")
PY

echo
echo "== durable audit appends, 8 concurrent writers, group commit (log on $dir)"
AIRLOCK_BENCH_DIR="$dir" cargo bench --locked --quiet -p airlock-audit --bench append -- 8 3
