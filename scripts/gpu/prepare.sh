#!/usr/bin/env bash
# Run HERE (the build machine), before a GPU session: build the release binary, the test
# binaries and the data packer, strip them and pack them (xz) into devbin/bin/, and lay the
# CIFAR-10 files out losslessly packed (data/examples/cifar_pack.rs: 52% of their size, where
# gzip gives 94%) in devbin/data{1,2}/, three per part, so that each device call carries less
# than 64 MiB with the working tree: two staging calls. The device unpacks them to plain .bin
# files (which the program memory-maps) and checks them against the SHA-256 sums made here.
#
#   bash scripts/gpu/prepare.sh [CIFAR10_DIR | cifar-10-binary.tar.gz]
#
# The source: the argument, else $CIFAR10_DIR, else ../shared/cifar-10-binary.tar.gz if the
# team has put the official archive there, else ../shared/cifar10. An archive is MD5-checked
# against the published sum (a mismatch is said, not refused) and extracted to a temporary
# folder. Where the files came from goes to devbin/data1/source.txt, which `on-gpu.sh stage`
# prints and keeps (staged-source-<date>.txt) and `summarize.py` quotes.
#
# Then, on the device (see scripts/gpu/README.md), one call per part:
#   call 1: carry ["devbin/bin", "devbin/data1"]  command: bash scripts/gpu/on-gpu.sh stage
#   call 2: carry ["devbin/data2"]                 command: BUDGET_S=580 bash scripts/gpu/on-gpu.sh stage tests train 0
# devbin/ is ignored by git.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
official_md5=c32a1d4ab5d03f1284b67883e8d87530
# (A relative source is taken from where the script was run, before the cd below.)
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
if [ -n "${1:-}" ]; then src="$(absolute "$1")"
elif [ -n "${CIFAR10_DIR:-}" ]; then src="$(absolute "$CIFAR10_DIR")"
elif [ -f "$repo/../shared/cifar-10-binary.tar.gz" ]; then src="$repo/../shared/cifar-10-binary.tar.gz"
else src="$repo/../shared/cifar10"; fi
[ -e "$src" ] || { echo "prepare.sh: $src: no such file or folder" >&2; exit 1; }
cd "$repo"

plain="$(mktemp -d)"
trap 'rm -rf "$plain"' EXIT
# The official archive (or any .tar.gz of the binary version): extracted, its MD5 said.
if [ -f "$src" ]; then
    case "$src" in *.tar.gz|*.tgz) ;; *) echo "prepare.sh: $src is a file but not a .tar.gz archive" >&2; exit 1 ;; esac
    md5="$(md5sum "$src" | cut -d' ' -f1)"
    if [ "$md5" = "$official_md5" ]; then verdict="the official archive"; else verdict="not the official archive's $official_md5"; fi
    source_line="$(cd "$(dirname "$src")" && pwd)/$(basename "$src") (MD5 $md5: $verdict)"
    mkdir "$plain/extracted"
    tar -xzf "$src" -C "$plain/extracted"
    inner="$(find "$plain/extracted" -name data_batch_1.bin -printf '%h\n' | head -n 1)"
    [ -n "$inner" ] || { echo "prepare.sh: $src holds no data_batch_1.bin" >&2; exit 1; }
    src="$inner"
else
    # (A folder that says where its files came from, as ../shared/cifar10's SOURCE.md does: its title.)
    about="a folder of the binary files"
    [ -f "$src/SOURCE.md" ] && about="$about; its SOURCE.md: $(head -n 1 "$src/SOURCE.md" | sed 's/^# *//')"
    source_line="$(cd "$src" 2> /dev/null && pwd || echo "$src") ($about)"
fi
echo "prepare.sh: the data: $source_line"

# A file of the source folder, as is or gzip-compressed (the program reads either).
have() { [ -f "$src/$1" ] || [ -f "$src/$1.gz" ]; }
have data_batch_1.bin || { echo "no CIFAR-10 binary files in $src" >&2; exit 1; }

cargo build --release -p model
cargo build --release -p data --example cifar_pack
rm -rf devbin && mkdir -p devbin/bin devbin/data1 devbin/data2 devbin/pack
cp target/release/model target/release/examples/cifar_pack devbin/pack/
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

# The plain files (decompressed first where the source holds NAME.bin.gz only), packed three
# per part, each part with the SHA-256 sums of its plain files; then unpacked again here and
# checked, so a packer fault shows before the session, not on the device.
for f in data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin; do
    if [ -f "$src/$f" ]; then ln -s "$(cd "$src" && pwd)/$f" "$plain/$f"; else gzip -dc "$src/$f.gz" > "$plain/$f"; fi
done
part() {
    local dir="$1"; shift
    mkdir -p "$plain/$dir"
    for f in "$@"; do ln -s "$plain/$f" "$plain/$dir/$f"; done
    target/release/examples/cifar_pack pack "$plain/$dir" "$dir"
    (cd "$plain" && sha256sum "$@") > "$dir/sums.txt"
    target/release/examples/cifar_pack unpack "$dir" "$plain/$dir.check" > /dev/null
    (cd "$plain/$dir.check" && sha256sum --quiet -c "$repo/$dir/sums.txt")
}
part devbin/data1 data_batch_1.bin data_batch_2.bin data_batch_3.bin
part devbin/data2 data_batch_4.bin data_batch_5.bin test_batch.bin
echo "$source_line" > devbin/data1/source.txt
du -sh devbin/*
# The working tree travels too: each call's total must stay under 64 MiB.
tree_mib=$(( $(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1) / 1048576 ))
for p in "devbin/bin devbin/data1" devbin/data2; do
    # shellcheck disable=SC2086
    mib=$(( $(du -cb $p | tail -n 1 | cut -f1) / 1048576 + tree_mib ))
    echo "carry [$p] + working tree: ~${mib} MiB"
    [ "$mib" -lt 63 ] || { echo "prepare.sh: [$p] with the working tree is ${mib} MiB, too close to the 64 MiB limit" >&2; exit 1; }
done
