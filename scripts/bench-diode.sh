#!/usr/bin/env bash
# Benchmark: `airlock diode send | receive` beside udpcast (`udp-sender --async --fec` and
# `udp-receiver`, the usual tool for one-way multicast file transfer) on the same bundle, the
# same loopback link and the same loss, in the same run. Reports goodput (bundle MB/s from the
# sender's start until the bundle is on disk and verified: airlock's receiver verifies it
# itself, udpcast's output is then checked by `airlock verify`, and that time is counted) and
# CPU seconds of sender and receiver together.
#
# Neither tool has a back channel here, so each is tried at a ladder of link rates and the
# fastest rate whose result verifies counts. At 0 % loss the sender talks to the receiver
# directly; at 1 % loss both go through `airlock diode relay --loss 1%` with the same seed.
# airlock uses 5 % repair symbols and one pass. udpcast uses `--fec 8x8/128` (6.25 %) and, where
# that does not get the file through, `--fec 8x16/128` (12.5 %).
#
#   --check            a small bundle and two rates: checks that both tools deliver at both
#                      loss levels (used by scripts/test.sh; figures are not judged)
#   AIRLOCK_BENCH_DIR  scratch directory (default: ~/.cache/airlock/bench-diode)
#   AIRLOCK_BENCH_SIZE bundle payload (default 200M; see make-bench-bundle.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
size="${AIRLOCK_BENCH_SIZE:-200M}"; [ "$check" = 1 ] && size=48M
dir="${AIRLOCK_BENCH_DIR:-${AIRLOCK_CACHE:-$HOME/.cache/airlock}/bench-diode}"
source scripts/lib/debian.sh
debian_require udpcast
cargo build --release --locked --quiet
airlock="$PWD/target/release/airlock"
rm -rf "$dir" && mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
bash scripts/make-bench-bundle.sh "$airlock" "$dir" "$size"

python3 - "$airlock" "$dir" "$check" <<'PY'
import os, re, signal, subprocess, sys, time
airlock, d, check = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
bundle = f"{d}/bench.airlock"
size = os.path.getsize(bundle)
subprocess.run(["cat", bundle], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
DEVNULL = subprocess.DEVNULL

def cpu_of(proc):
    """Waits for proc; returns (exit code, user+system CPU seconds)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime

def start_relay(listen, to, frm=None, loss="1%"):
    cmd = [airlock, "diode", "relay", "--listen", listen, "--to", to, "--loss", loss,
           "--seed", "7", "--idle", "2s", "--max-time", "120s", "--json"]
    if frm:
        cmd += ["--from", frm]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    addr = re.search(r"on (\S+) forwarding", p.stderr.readline()).group(1)
    return p, addr

def stop(p):
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()

def run_airlock(rate, lossy):
    out = f"{d}/out-airlock"
    subprocess.run(["rm", "-rf", out], check=True)
    rx = subprocess.Popen([airlock, "diode", "receive", "--listen", "127.0.0.1:0", "-o", out,
                           "--idle-timeout", "3s", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = re.search(r"on (\S+) into", rx.stderr.readline()).group(1)
    relay, target = start_relay("127.0.0.1:0", port) if lossy else (None, port)
    t0 = time.perf_counter()
    tx = subprocess.Popen([airlock, "diode", "send", bundle, "--to", target, "--rate", rate,
                           "--overhead", "5%", "--passes", "1"], stdout=DEVNULL, stderr=DEVNULL)
    rc, rx_cpu = cpu_of(rx)
    elapsed = time.perf_counter() - t0
    _, tx_cpu = cpu_of(tx)
    stop(relay)
    ok = rc == 0 and os.path.exists(f"{out}/bench_1.0.0.airlock")
    return ok, elapsed, tx_cpu + rx_cpu

def run_udpcast(setting, lossy):
    rate, fec = setting
    out = f"{d}/out-udpcast.airlock"
    subprocess.run(["rm", "-f", out], check=True)
    # udpcast's receiver takes data only from its sender's port (portbase + 1).
    rx = subprocess.Popen(["udp-receiver", "--file", out, "--portbase", "9100", "--interface", "lo",
                           "--nokbd", "--mcast-rdv-address", "127.0.0.1", "--start-timeout", "10",
                           "--receive-timeout", "3"],
                          stdout=DEVNULL, stderr=DEVNULL)
    relay, _ = start_relay("127.0.0.1:9000", "127.0.0.1:9100", "127.0.0.1:9101") if lossy else (None, None)
    time.sleep(0.3)
    t0 = time.perf_counter()
    tx = subprocess.Popen(["udp-sender", "--file", bundle, "--portbase", "9000" if lossy else "9100",
                           "--interface", "lo", "--async", "--fec", fec, "--max-bitrate", rate,
                           "--mcast-data-address", "127.0.0.1", "--autostart", "1", "--nokbd"],
                          stdout=DEVNULL, stderr=DEVNULL)
    rc, rx_cpu = cpu_of(rx)
    _, tx_cpu = cpu_of(tx)
    verify = subprocess.Popen([airlock, "verify", out, "--trust", f"{d}/keys/publisher.pub"],
                              stdout=DEVNULL, stderr=DEVNULL)
    vrc, v_cpu = cpu_of(verify)
    elapsed = time.perf_counter() - t0
    stop(relay)
    return rc == 0 and vrc == 0, elapsed, tx_cpu + rx_cpu + v_cpu

ladders = {
    "airlock": ["1G", "2G"] if check else ["1G", "2G", "4G", "6G", "8G"],
    "udpcast": [(r, f) for f in ("8x8/128", "8x16/128") for r in (["200m"] if check else ["100m", "200m", "400m", "600m", "800m"])],
}
runners = {"airlock": run_airlock, "udpcast": run_udpcast}
mb = size / 1e6
print(f"bundle: {mb:.0f} MB; 1500-byte datagrams on loopback; {os.cpu_count()} cores shared by both ends")
print(f"{'tool':8} {'loss':>4} {'rate':>20} {'result':>8} {'seconds':>8} {'MB/s':>7} {'CPU s/GB':>9}")
best = {}
for loss in (0, 1):
    for tool in ("airlock", "udpcast"):
        for setting in ladders[tool]:
            rate = setting if isinstance(setting, str) else f"{setting[0]} fec {setting[1]}"
            ok, secs, cpu = runners[tool](setting, loss == 1)
            gp = mb / secs if ok else 0.0
            print(f"{tool:8} {loss:>3}% {rate:>20} {'verified' if ok else 'failed':>8} {secs:8.2f} "
                  f"{gp:7.1f} {cpu / (size / 1e9):9.2f}", flush=True)
            if ok and gp > best.get((tool, loss), (0, 0))[0]:
                best[(tool, loss)] = (gp, cpu / (size / 1e9), rate)
print()
for loss in (0, 1):
    a, u = best.get(("airlock", loss)), best.get(("udpcast", loss))
    line = f"{loss}% loss: airlock {a[0]:.1f} MB/s at {a[2]}" if a else f"{loss}% loss: airlock failed at every rate"
    line += f", udpcast {u[0]:.1f} MB/s at {u[2]}" if u else ", udpcast failed at every rate"
    if a and u:
        line += f": {a[0] / u[0]:.2f}x udpcast; CPU {a[1]:.2f} vs {u[1]:.2f} s/GB"
    print(line)
if check and any(best.get((t, l)) is None for t in ("airlock",) for l in (0, 1)):
    sys.exit("airlock did not deliver a verified bundle at some loss level")
PY
