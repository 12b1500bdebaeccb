#!/usr/bin/env bash
# Makes the benchmarks' input: DIR/bench.airlock, a bundle whose one safetensors tensor holds
# SIZE of incompressible bytes (GiB, or MiB with an M suffix: 200M), signed with a fresh key
# pair DIR/keys/publisher.{key,pub}.
#
# Packing holds the source and the bundle at once, and every benchmark then makes at most one
# more copy, so twice SIZE must be free under DIR. Where it is not, the bundle is made as large
# as the disk allows (in steps of 256 MiB) and a note says so; the benchmarks print the size
# they measured. Less than 256 MiB of room is an error.
#
#   scripts/make-bench-bundle.sh AIRLOCK_BINARY DIR SIZE
set -euo pipefail
airlock="$1" dir="$2" gib="$3"
mkdir -p "$dir/src"
python3 - "$dir" "$gib" <<'PY'
import json, os, shutil, struct, sys
d, size = sys.argv[1], sys.argv[2]
MiB = 1 << 20
step = 256 * MiB
margin = 512 * MiB  # keys, manifest, signatures, registry and audit files beside the copies
wanted = int(size[:-1]) * MiB if size.endswith("M") else int(size) << 30
free = shutil.disk_usage(d).free
n = wanted
if 2 * n + margin > free:
    n = (free - margin) // 2 // step * step
    if n < min(step, wanted):
        sys.exit(f"make-bench-bundle: {free // MiB} MiB free under {d}; the benchmark needs at least "
                 f"{(2 * min(step, wanted) + margin) // MiB} MiB (set AIRLOCK_BENCH_DIR to a roomier disk)")
    print(f"note: {free / 2**30:.1f} GiB free under {d}: the benchmark bundle holds "
          f"{n // MiB} MiB, not {wanted // MiB} MiB", file=sys.stderr)
header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
header += b" " * (-len(header) % 8)
block = os.urandom(MiB)
with open(f"{d}/src/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
    for i in range(n // MiB):
        f.write(block[i % 256:] + block[:i % 256])  # no two MiB alike
PY
echo '{"architectures":["Bench"]}' > "$dir/src/config.json"
"$airlock" keygen -o "$dir/keys" --name publisher >/dev/null 2>&1
"$airlock" pack "$dir/src" --name bench --version 1.0.0 --license Apache-2.0 \
  --key "$dir/keys/publisher.key" -o "$dir/bench.airlock" >/dev/null
rm -rf "$dir/src"
