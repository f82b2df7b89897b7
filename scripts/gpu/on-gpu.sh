#!/usr/bin/env bash
# Run ON THE GPU MACHINE (no Rust there: it uses the binaries of scripts/gpu/prepare.sh).
#
#   bash scripts/gpu/on-gpu.sh stage            copy the carried devbin/data*/ files to /root/cifar10
#   bash scripts/gpu/on-gpu.sh tests            the GPU tests -> $OUT/cuda-tests-<date>.txt
#   bash scripts/gpu/on-gpu.sh train [SEEDS]    24-epoch runs -> $OUT/train-24ep-<date>-seed<N>.log + run folders
#   bash scripts/gpu/on-gpu.sh profile [FLAGS]  time per operation of one step -> $OUT/profile-<date>.txt
#                                                (e.g. profile --cuda-graph, profile --bf16 --channels-last --cuda-graph)
#   bash scripts/gpu/on-gpu.sh lrfind [FLAGS]   the LR range test alone -> $OUT/lr-find-<date>.txt
#                                                (e.g. lrfind lrfind --out-scale 1: two settings, one call)
#   bash scripts/gpu/on-gpu.sh sanitize BIN [FILTER]  a test binary under compute-sanitizer -> $OUT/sanitize-<date>.txt
#   bash scripts/gpu/on-gpu.sh stage tests train 0
#
# The binaries persist between calls in /root/devbin (the machine keeps its files while warm).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT" /root/cifar10 /root/devbin
# shellcheck source=/dev/null
source scripts/gpu/env.sh
export CIFAR10_DIR=/root/cifar10
day="$(date -u +%Y-%m-%d)"

stage() {
    [ -d devbin/bin ] && cp devbin/bin/* /root/devbin/
    for d in devbin/data*; do [ -d "$d" ] && cp "$d"/*.bin /root/cifar10/ 2>/dev/null; done
    ls -la /root/cifar10 /root/devbin
}

header() {
    nvidia-smi -L
    nvidia-smi --query-gpu=driver_version --format=csv,noheader | sed 's/^/driver version: /'
    date -u
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

tests() {
    local f="$OUT/cuda-tests-$day.txt"
    {
        header
        for t in test-cuda test-cuda_ops test-cuda_gradcheck test-cuda_train; do
            echo "== $t --ignored --test-threads=1 --nocapture"
            # A hung test must not eat the whole call (600 s): TEST_TIMEOUT s per binary (default 150).
            timeout "${TEST_TIMEOUT:-150}" /root/devbin/$t --ignored --test-threads=1 --nocapture 2>&1
            echo "== $t exit status $? (124: timed out)"
        done
    } > "$f" 2>&1
    grep -E '^test |test result|exit status' "$f"
}

# Extra flags for `model train`, e.g. TRAIN_ARGS="--lr-max 0.4 --lr-min 0.04" (word-split).
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"

train() {
    local seeds=("$@")
    [ ${#seeds[@]} -eq 0 ] && seeds=(0)
    for s in "${seeds[@]}"; do
        local log="$OUT/train-24ep-$day-seed$s.log"
        { nvidia-smi -L | head -n 1; timeout "${TRAIN_TIMEOUT:-500}" /root/devbin/model train --data /root/cifar10 --seed "$s" --out "$OUT/runs" --name "seed$s" --no-progress "${TRAIN_ARGS[@]}" 2>&1; } | tee "$log"
    done
}

# Each call appends to the day's file, under a line naming its flags.
profile() {
    { header; echo "== model profile $*"; /root/devbin/model profile --data /root/cifar10 "$@" 2>&1; } | tee -a "$OUT/profile-$day.txt"
}

# The LR range test alone (prints both rules' suggestions; the curve goes to the run folder).
lrfind() {
    { header; echo "== model lr-find $*"; /root/devbin/model lr-find --data /root/cifar10 --out "$OUT/runs" --no-progress "$@" 2>&1; } | tee -a "$OUT/lr-find-$day.txt"
}

# One GPU test binary under compute-sanitizer (memcheck: out-of-bounds and misaligned accesses,
# or another tool with TOOL=racecheck|synccheck|initcheck), e.g. `sanitize cuda_ops batch_norm_relu`.
sanitize() {
    local bin="$1"; shift
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || find / -name compute-sanitizer -type f 2>/dev/null | head -n 1)"
    { header; echo "== compute-sanitizer --tool ${TOOL:-memcheck} test-$bin --ignored $*";
      timeout 500 "$sanitizer" --tool "${TOOL:-memcheck}" /root/devbin/test-"$bin" --ignored --test-threads=1 "$@" 2>&1; } | tee -a "$OUT/sanitize-$day.txt"
}

mode=""
args=()
for a in "$@"; do
    case "$a" in
        stage|tests|train|profile|lrfind|sanitize) [ -n "$mode" ] && { "$mode" "${args[@]}"; }; mode="$a"; args=() ;;
        *) args+=("$a") ;;
    esac
done
[ -n "$mode" ] && "$mode" "${args[@]}"
