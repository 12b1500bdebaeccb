#!/usr/bin/env bash
# Benchmark: `airlock verify` on a 4 GiB bundle beside `sha256sum` and `openssl dgst -sha256`
# on the same bytes, in the same run. Prints throughputs, the ratios, the hardware bound
# (cores x single-core OpenSSL SHA-256), and airlock's peak RSS.
#
#   --check          exit non-zero if verify's peak RSS reaches 64 MiB (memory must stay bounded);
#                    a 1 GiB bundle unless AIRLOCK_BENCH_GIB says otherwise
#   AIRLOCK_BENCH_DIR  scratch directory (default: ~/.cache/airlock/bench; needs twice the
#                      payload free, else the bundle shrinks to fit: see make-bench-bundle.sh)
#   AIRLOCK_BENCH_GIB  bundle payload size in GiB (default 4)
#   AIRLOCK_BENCH_KEEP set to keep the bundle afterwards
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
# The check is of memory, which must not grow with the bundle: 1 GiB shows it as well as
# 4 GiB, in a fraction of the time it takes to make the bundle.
gib="${AIRLOCK_BENCH_GIB:-4}"; [ "$check" = 1 ] && [ -z "${AIRLOCK_BENCH_GIB:-}" ] && gib=1
dir="${AIRLOCK_BENCH_DIR:-${AIRLOCK_CACHE:-$HOME/.cache/airlock}/bench}"
cargo build --release --locked --quiet
airlock="$PWD/target/release/airlock"
rm -rf "$dir" && mkdir -p "$dir"
[ -n "${AIRLOCK_BENCH_KEEP:-}" ] || trap 'rm -rf "$dir"' EXIT
bash scripts/make-bench-bundle.sh "$airlock" "$dir" "$gib"
bundle="$dir/bench.airlock"

python3 - "$airlock" "$bundle" "$dir/keys/publisher.pub" "$check" <<'PY'
import os, resource, subprocess, sys, time
airlock, bundle, pub, check = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
size = os.path.getsize(bundle)
cores = os.cpu_count()
subprocess.run(["cat", bundle], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

def best(cmd, runs=2):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return min(times)

def peak_rss_kib(cmd):
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1); os.dup2(devnull, 2)
        os.execv(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd} failed")
    return usage.ru_maxrss

verify = [airlock, "verify", bundle, "--trust", pub]
rss = peak_rss_kib(verify)
t_airlock = best(verify)
t_sha256sum = best(["sha256sum", bundle])
t_openssl = best(["openssl", "dgst", "-sha256", bundle])
mb = size / 1e6
speed = subprocess.run(["openssl", "speed", "-evp", "sha256", "-bytes", "1048576", "-seconds", "3"], capture_output=True, text=True, check=True).stdout
raw_core = float(speed.strip().splitlines()[-1].split()[-1].rstrip("k")) * 1000 / 1e6
bound = cores * mb / t_openssl
raw_bound = cores * raw_core
print(f"bundle: {size / 2**30:.2f} GiB, {cores} cores, SHA-NI: {'yes' if 'sha_ni' in open('/proc/cpuinfo').read() else 'no'}")
print(f"{'tool':<28}{'seconds':>10}{'MB/s':>10}")
for name, t in [("airlock verify", t_airlock), ("sha256sum", t_sha256sum), ("openssl dgst -sha256", t_openssl)]:
    print(f"{name:<28}{t:>10.3f}{mb / t:>10.0f}")
print(f"ratio airlock / sha256sum:            {t_sha256sum / t_airlock:.2f}x")
print(f"ratio airlock / openssl (1 core):     {t_openssl / t_airlock:.2f}x")
print(f"bound, cores x openssl dgst (file):  {bound:.0f} MB/s; airlock reaches {mb / t_airlock / bound:.2f} of it (target >= 0.85)")
print(f"bound, cores x openssl speed (RAM):   {raw_bound:.0f} MB/s; airlock reaches {mb / t_airlock / raw_bound:.2f} of it")
print(f"airlock verify peak RSS:              {rss / 1024:.1f} MiB (bound: 64 MiB)")
if check and rss >= 64 * 1024:
    sys.exit(f"FAIL: verify peak RSS {rss / 1024:.1f} MiB >= 64 MiB")
PY
