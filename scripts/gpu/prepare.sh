#!/usr/bin/env bash
# Run HERE (the build machine), before a GPU session: build the release binary and the
# test binaries, strip them and pack them (xz) into devbin/bin/, and lay the CIFAR-10 files
# out gzip-compressed in devbin/data{1,2,3}/, two per part, so that each device call carries
# less than 64 MiB with the working tree (three staging calls instead of four; the device
# decompresses them to plain .bin files, which the program memory-maps).
#
#   bash scripts/gpu/prepare.sh [CIFAR10_DIR]
#
# Then, on the device (see scripts/gpu/README.md), one call per stage:
#   call 1: carry ["devbin/bin", "devbin/data1"]  command: bash scripts/gpu/on-gpu.sh stage
#   call 2: carry ["devbin/data2"]                 command: bash scripts/gpu/on-gpu.sh stage
#   call 3: carry ["devbin/data3"]                 command: BUDGET_S=590 bash scripts/gpu/on-gpu.sh stage tests train 0
# devbin/ is ignored by git.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
src="${1:-${CIFAR10_DIR:-$repo/../shared/cifar10}}"

# A file of the source folder, as is or gzip-compressed (the program reads either).
have() { [ -f "$src/$1" ] || [ -f "$src/$1.gz" ]; }
have data_batch_1.bin || { echo "no CIFAR-10 binary files in $src" >&2; exit 1; }

cargo build --release -p model
rm -rf devbin && mkdir -p devbin/bin devbin/data1 devbin/data2 devbin/data3 devbin/pack
cp target/release/model devbin/pack/
# Test binaries: name -> path, from cargo's JSON messages.
cargo test --workspace --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    case "$name" in
        cuda_ops|cuda_train|cuda_gradcheck|cuda) cp "$exe" "devbin/pack/test-$name" ;;
    esac
done
strip devbin/pack/*
# The device runs these binaries as they are: its C library must be at least this version
# (the device image of 2026-11 has Python 3.12.3, as Ubuntu 24.04 does, whose glibc is 2.39;
# not checked there: `ldd --version` in the first call would say).
echo "the binaries need glibc $(objdump -T devbin/pack/* | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 | cut -d_ -f2) or newer"
# ~15 MB of binaries -> ~3 MB.
tar -C devbin/pack -cJf devbin/bin/devbin.tar.xz .
rm -rf devbin/pack

# Each data file gzip-compressed into its part (a copy if the source is compressed already).
part() {
    local dir="$1"; shift
    for f in "$@"; do
        if [ -f "$src/$f.gz" ] && [ ! -f "$src/$f" ]; then cp "$src/$f.gz" "$dir/"; else gzip -c "$src/$f" > "$dir/$f.gz"; fi
    done
}
part devbin/data1 data_batch_1.bin data_batch_2.bin
part devbin/data2 data_batch_3.bin data_batch_4.bin
part devbin/data3 data_batch_5.bin test_batch.bin
du -sh devbin/*
# The working tree travels too: each call's total must stay under 64 MiB.
tree_mib=$(( $(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1) / 1048576 ))
for p in "devbin/bin devbin/data1" devbin/data2 devbin/data3; do
    # shellcheck disable=SC2086
    mib=$(( $(du -cb $p | tail -n 1 | cut -f1) / 1048576 + tree_mib ))
    echo "carry [$p] + working tree: ~${mib} MiB"
    [ "$mib" -lt 63 ] || { echo "prepare.sh: [$p] with the working tree is ${mib} MiB, too close to the 64 MiB limit" >&2; exit 1; }
done
