#!/usr/bin/env bash
# Run HERE (the build machine), before a GPU session: build the release binary and the
# test binaries, strip them into devbin/bin/, and lay the CIFAR-10 files out in
# devbin/data{1,2,3,4}/ so that each device call carries less than 64 MiB.
#
#   bash scripts/gpu/prepare.sh [CIFAR10_DIR]
#
# Then, on the device (see scripts/gpu/README.md), one call per stage:
#   call 1: carry ["devbin/bin", "devbin/data1"]  command: bash scripts/gpu/on-gpu.sh stage
#   call 2: carry ["devbin/data2"]                 command: bash scripts/gpu/on-gpu.sh stage
#   call 3: carry ["devbin/data3"]                 command: bash scripts/gpu/on-gpu.sh stage
#   call 4: carry ["devbin/data4"]                 command: bash scripts/gpu/on-gpu.sh stage tests train
# devbin/ is ignored by git.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
src="${1:-${CIFAR10_DIR:-$repo/../shared/cifar10}}"
[ -f "$src/data_batch_1.bin" ] || { echo "no CIFAR-10 binary files in $src" >&2; exit 1; }

cargo build --release -p model
rm -rf devbin && mkdir -p devbin/bin devbin/data1 devbin/data2 devbin/data3 devbin/data4
cp target/release/model devbin/bin/
# Test binaries: name -> path, from cargo's JSON messages.
cargo test --workspace --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    case "$name" in
        cuda_ops|cuda_train|cuda_gradcheck|cuda) cp "$exe" "devbin/bin/test-$name" ;;
    esac
done
strip devbin/bin/*
cp "$src/data_batch_1.bin" devbin/data1/
cp "$src/data_batch_2.bin" "$src/data_batch_3.bin" devbin/data2/
cp "$src/data_batch_4.bin" "$src/data_batch_5.bin" devbin/data3/
cp "$src/test_batch.bin" devbin/data4/
du -sh devbin/*
