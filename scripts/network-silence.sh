#!/usr/bin/env bash
# The network-silence test: the README's main job (scripts/demo.sh: pack, the diode on
# loopback, import, approve, run, embed, ingest, search, ask, serve with API calls) and then
# the official OpenAI and Anthropic SDKs against `airlock serve`, all inside a network
# namespace that has only loopback, with every airlock process (and what it starts) under
# `strace -f -e trace=network,openat`. HTTP(S)_PROXY, ALL_PROXY, HF_ENDPOINT and the like
# point at addresses that must never be dialled. Fails on any connect or addressed send to a
# non-loopback address, anything to port 53, a resolver socket or file (a DNS lookup):
# crates/airlock-testkit/src/strace.rs decides, and is itself tested on recorded traces.
#
# To show that the check can fail, it also traces `airlock --dangerous-no-sandbox doctor`,
# whose probe connects out on purpose, and requires the checker to flag it.
#
# Then an egress allow-list: a second network namespace on a veth pair holds the enclave's
# "directory" (10.77.0.2:8636, on the list) and a retired service (10.77.0.2:8637, on the list
# with a lapsed entry). `airlock doctor`, traced, tries each; only the listed one is reached
# (the listener counts its connections), every other attempt is refused by the kernel (EPERM
# in the trace) and in the audit log, and the checker given the allow-list flags those
# attempts and nothing else, and still flags the deliberate outbound call.
#
#   AIRLOCK_SILENCE_DIR  where traces go (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/debian.sh
debian_require strace iproute2
bash scripts/setup-test-tools.sh --demo
source scripts/lib/cargo-env.sh
# Everything is built and fetched out here: the namespace has no network at all.
cargo build --release --locked --quiet
cargo build --release --locked --quiet -p airlock-testkit --bin trace-check
dir="${AIRLOCK_SILENCE_DIR:-$(mktemp -d)}"
rm -rf "$dir/traces" "$dir/control" "$dir/demo" "$dir/egress-traces" "$dir/egress"
mkdir -p "$dir/traces" "$dir/control" "$dir/demo" "$dir/egress-traces" "$dir/egress"

# airlock under strace, with every proxy and hub variable pointing somewhere it must not go.
traced() {
  local out="$1" wrapper="$2"
  cat > "$wrapper" <<SH
#!/bin/sh
export HTTP_PROXY=http://203.0.113.10:3128 HTTPS_PROXY=http://203.0.113.10:3128
export http_proxy=http://203.0.113.10:3128 https_proxy=http://203.0.113.10:3128
export ALL_PROXY=socks5://203.0.113.11:1080 all_proxy=socks5://203.0.113.11:1080
export HF_ENDPOINT=http://203.0.113.12 HF_HUB_OFFLINE=0 HUGGINGFACE_HUB_URL=http://203.0.113.12
export NO_PROXY= no_proxy=
# strace attaches to this shell, which then becomes airlock: its caller's pid is airlock's
# own, so a kill reaches airlock (and stops it gracefully) rather than strace.
strace -f -qq -e abbrev=none -e trace=network,openat -o "$out/trace.\$\$" -p \$\$ 2>"$out/strace.\$\$.err" &
tries=0
until grep -q "^TracerPid:[[:space:]]*[1-9]" /proc/\$\$/status; do
  tries=\$((tries + 1))
  [ \$tries -lt 1000 ] || { echo "strace did not attach:" >&2; cat "$out/strace.\$\$.err" >&2; exit 2; }
  sleep 0.01
done
exec "$PWD/target/release/airlock" "\$@"
SH
  chmod +x "$wrapper"
}
traced "$dir/traces" "$dir/airlock"
traced "$dir/control" "$dir/airlock-control"
traced "$dir/egress-traces" "$dir/airlock-egress"

export dir
unshare -rn bash -euo pipefail -c '
  ip link set lo up
  export CARGO_NET_OFFLINE=true
  echo "== the main job, inside a namespace with only loopback"
  AIRLOCK_BIN="$dir/airlock" AIRLOCK_DEMO_DIR="$dir/demo" bash scripts/demo.sh > "$dir/demo.log" 2>&1 \
    || { tail -40 "$dir/demo.log"; exit 1; }
  grep -q "Paris" "$dir/demo.log" || { echo "the demo did not answer Paris" >&2; exit 1; }
  echo "== the official SDKs against airlock serve, inside the same namespace"
  export AIRLOCK_DATA="$dir/demo/registry"
  key="$("$dir/airlock" keys create --name silence --json | python3 -c "import json,sys; print(json.load(sys.stdin)[\"key\"])")"
  "$dir/airlock" serve --listen 127.0.0.1:0 --model chat=smollm2:prod --model embed=all-minilm-l6-v2:prod \
    > "$dir/serve.out" 2> "$dir/serve.err" &
  server=$!
  for _ in $(seq 300); do grep -q "serving on" "$dir/serve.out" 2>/dev/null && break; sleep 0.1; done
  base="$(sed -n "s|^airlock: serving on \(http://[^ ]*\)/v1$|\1|p" "$dir/serve.out")"
  [ -n "$base" ] || { cat "$dir/serve.err" >&2; exit 1; }
  "${AIRLOCK_CACHE:-$HOME/.cache/airlock}/tools-venv/bin/python" scripts/sdk-e2e.py "$base" "$key" chat embed > "$dir/sdk.json"
  kill "$server"; wait "$server" 2>/dev/null || true
  echo "== a deliberate outbound call, for the checker to catch"
  "$dir/airlock-control" --dangerous-no-sandbox doctor > /dev/null 2>&1 || true
  echo "== an allow-list: the enclave'"'"'s directory in a second namespace, on a veth pair"
  unshare -n sleep 600 &
  peer=$!
  for _ in $(seq 100); do
    [ "$(readlink /proc/$peer/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break; sleep 0.05
  done
  ip link add egress-a type veth peer name egress-b
  ip link set egress-b netns "$peer"
  ip addr add 10.77.0.1/24 dev egress-a
  ip link set egress-a up
  nsenter -t "$peer" -n sh -c "ip link set lo up && ip addr add 10.77.0.2/24 dev egress-b && ip link set egress-b up"
  nsenter -t "$peer" -n python3 scripts/lib/count-connections.py 10.77.0.2 8636 8637 "$dir/egress/accepted" &
  services=$!
  for _ in $(seq 100); do [ -s "$dir/egress/accepted" ] && break; sleep 0.05; done
  export AIRLOCK_DATA="$dir/egress/registry"
  "$dir/airlock" init > /dev/null
  python3 - "$AIRLOCK_DATA/policy.toml" <<PY
import sys
path = sys.argv[1]
text = open(path).read()
text += """
[egress]
allow = [
  { to = "10.77.0.2:8636", purpose = "directory", owner = "it-ops", until = "2099-12-31" },
  { to = "10.77.0.2:8637", purpose = "retired", owner = "it-ops", until = "2020-01-01" },
]
"""
open(path, "w").write(text)
PY
  "$dir/airlock-egress" doctor --json > "$dir/egress/doctor.json" || true
  "$dir/airlock" egress log --json > "$dir/egress/log.jsonl"
  kill "$services" "$peer"; wait "$services" "$peer" 2>/dev/null || true
'
# strace writes until its last tracee is gone: wait for every one to finish.
for _ in $(seq 100); do pgrep -f "strace -f -qq -e abbrev=none" >/dev/null || break; sleep 0.1; done
checker="$PWD/target/release/trace-check"
echo "== network silence: every airlock process of the run above"
"$checker" "$dir"/traces/trace.[0-9]*
echo "== the checker catches the deliberate outbound call"
if "$checker" "$dir"/control/trace.[0-9]* 2> "$dir/control.txt"; then
  echo "the checker missed doctor's outbound probe (see $dir/control)" >&2
  exit 1
fi
grep -m1 "192.0.2.1:443" "$dir/control.txt"
echo "== the allow-list: only its destination reached, every other attempt refused and logged"
python3 - "$dir/egress" <<'PY'
import json, sys
d = sys.argv[1]
states = {e["to"]: e["state"] for e in json.load(open(f"{d}/doctor.json"))["egress"]}
assert states == {"10.77.0.2:8636": "reached", "10.77.0.2:8637": "expired, refused"}, states
accepted = dict(line.split() for line in open(f"{d}/accepted") if " " in line)
assert accepted == {"8636": "1", "8637": "0"}, accepted
log = [json.loads(line) for line in open(f"{d}/log.jsonl")]
seen = {(e["decision"], e["destination"]) for e in log}
for want in [("allowed", "10.77.0.2:8636"), ("refused", "10.77.0.2:8637"), ("refused", "192.0.2.1:443")]:
    assert want in seen, (want, seen)
print("doctor reached 10.77.0.2:8636 (1 connection accepted), 10.77.0.2:8637 and 192.0.2.1:443 refused and logged")
PY
# Given the allow-list, the checker flags exactly the two attempts doctor made beyond it (the
# kernel refused both: doctor's report, the listener's count and the audit log above say so),
# and nothing to the listed destination.
"$checker" --allow 10.77.0.2:8636 "$dir"/egress-traces/trace.[0-9]* 2> "$dir/egress.txt" && {
  echo "the checker saw no attempt beyond the allow-list, though doctor made two" >&2; exit 1; }
flagged="$(sed -n 's/^[^ ]*:[0-9]*: \(connect to [^ ]*\), not loopback$/\1/p' "$dir/egress.txt" | sort -u | tr '\n' ' ')"
[ "$flagged" = "connect to 10.77.0.2:8637 connect to 192.0.2.1:443 " ] \
  && [ "$(grep -c ": connect to\|: sendto\|: name lookup\|socket$" "$dir/egress.txt")" = 2 ] \
  || { echo "the checker with the allow-list flagged other than the two refused attempts:" >&2
       cat "$dir/egress.txt" >&2; exit 1; }
echo "the checker with the allow-list flags only the two refused attempts: $flagged"
if "$checker" --allow 10.77.0.2:8636 "$dir"/control/trace.[0-9]* 2> /dev/null; then
  echo "the checker with an allow-list missed doctor's outbound probe" >&2
  exit 1
fi
echo "network silence: $(ls "$dir"/traces/trace.[0-9]* | wc -l) airlock processes traced, none reached beyond loopback"
