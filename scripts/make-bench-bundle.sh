#!/usr/bin/env bash
# Makes the benchmarks' input: DIR/bench.airlock, a bundle whose one safetensors tensor holds
# SIZE of incompressible bytes (GiB, or MiB with an M suffix: 200M), signed with a fresh key
# pair DIR/keys/publisher.{key,pub}.
#
#   scripts/make-bench-bundle.sh AIRLOCK_BINARY DIR SIZE
set -euo pipefail
airlock="$1" dir="$2" gib="$3"
mkdir -p "$dir/src"
python3 - "$dir/src/model.safetensors" "$gib" <<'PY'
import json, os, struct, sys
path, size = sys.argv[1], sys.argv[2]
n = int(size[:-1]) << 20 if size.endswith("M") else int(size) << 30
header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
header += b" " * (-len(header) % 8)
block = os.urandom(1 << 20)
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
    for i in range(n >> 20):
        f.write(block[i % 256:] + block[:i % 256])  # no two MiB alike
PY
echo '{"architectures":["Bench"]}' > "$dir/src/config.json"
"$airlock" keygen -o "$dir/keys" --name publisher >/dev/null 2>&1
"$airlock" pack "$dir/src" --name bench --version 1.0.0 --license Apache-2.0 \
  --key "$dir/keys/publisher.key" -o "$dir/bench.airlock" >/dev/null
rm -rf "$dir/src"
