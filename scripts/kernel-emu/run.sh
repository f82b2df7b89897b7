#!/usr/bin/env bash
# Build and run the CPU emulation of our CUDA kernels (see README.md beside this file).
#
#   scripts/kernel-emu/run.sh             plain build, then ASan+UBSan, then TSan builds of every test
#   scripts/kernel-emu/run.sh --quick     the plain build only
#   scripts/kernel-emu/run.sh --big       also batch_norm_relu's NCHW case with 256 splits (4.2M values)
#   scripts/kernel-emu/run.sh --selftest  build deliberately broken copies of the kernels and check
#                                         that the harness rejects each one
#
# Exits non-zero on any mismatch, sanitizer report, divergent barrier or build error.
# Needs g++ >= 12 (C++20) with libasan/libubsan/libtsan; no GPU, no cargo.
set -u -o pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
CXX="${CXX:-g++}"
FLAGS=(-O1 -g -std=c++20 -pthread -ffp-contract=off -Wall -Wextra)
ASAN=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
TSAN=(-fsanitize=thread)
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:exitcode=66"
TESTS=(batch_norm_relu graph_step reduce layout sgd cross_entropy augment elementwise bf16 max_pool conv_c3)
mkdir -p build

quick=0 big=0 selftest=0
for a in "$@"; do
    case "$a" in
        --quick) quick=1 ;;
        --big) big=1 ;;
        --selftest) selftest=1 ;;
        *) echo "usage: $0 [--quick] [--big] [--selftest]" >&2; exit 2 ;;
    esac
done

fail=0
# build VARIANT TEST OUT [extra flags...]
build() {
    local variant="$1" t="$2" out="$3"; shift 3
    local extra=()
    case "$variant" in
        asan) extra=("${ASAN[@]}") ;;
        tsan) extra=("${TSAN[@]}") ;;
    esac
    "$CXX" "${FLAGS[@]}" "${extra[@]}" "$@" -o "$out" "test_$t.cpp"
}

if [ "$selftest" = 1 ]; then
    # name | kernel file | sed expression | build variant | test | what the harness must notice
    mutants=(
        "nosync|batch_norm_relu|/sn\[t\] = cn; sm\[t\] = cm; sq\[t\] = cq;/{n;s/__syncthreads();//}|tsan|batch_norm_relu|missing __syncthreads before the NCHW tree (data race)"
        "divergent|batch_norm_relu|/merge(sn\[t\], sm\[t\], sq\[t\]/{n;n;s/__syncthreads();/if (t < w) __syncthreads();/}|plain|batch_norm_relu|__syncthreads inside a branch"
        "stride|batch_norm_relu|0,/j += BNR_NHWC_Y/s//j += BNR_NHWC_X/|plain|batch_norm_relu|wrong row stride in stats_nhwc"
        "biasedvar|batch_norm_relu|s#q / (n - A(1))#q / n#|plain|batch_norm_relu|biased variance in running_var"
        "guard|batch_norm_relu|s/if (ty == 0 && c < c_count) {/if (ty == 0) {/|asan|batch_norm_relu|NHWC partial written past C (out of bounds)"
        "channel|batch_norm_relu|0,/(e \/ hw) % c_count/s//(e % hw) % c_count/|plain|batch_norm_relu|wrong NCHW channel in apply"
        "coef|batch_norm_relu|s/coef\[c_count + c\] = a0 \/ A(m);/coef[c_count + c] = a1 \/ A(m);/|plain|batch_norm_relu|dbeta/M from the wrong sum"
        "clamp|graph_step|s/j = total - 1;/j = total;/|asan|graph_step|stage_batch clamp one past the end"
        "lrclamp|graph_step|s/s < steps ? s : steps - 1/s/|asan|graph_step|stage_batch LR index unclamped"
        "tree|reduce|0,/w \*= 2/s//w *= 4/|plain|reduce|sum_reduce tree skips levels"
        "tie|reduce|s/z\[j\] > best_v/z[j] >= best_v/|plain|reduce|count_correct takes the last maximum"
        "layout|layout|s/const unsigned int ch = e % c, r = e \/ c;/const unsigned int ch = e % hw, r = e \/ c;/|plain|layout|nchw_to_nhwc channel index"
        "sgdfirst|sgd|s/first_step ? d :/0 ? d :/|plain|sgd|first step not buf = d"
        "sgdlrptr|sgd|s/lr = \*lr_ptr;/(void)0;/|plain|sgd|device LR (lr_ptr) ignored"
        "sgdkeep|sgd|s/__fsub_rn(1.0f, dampening)/1.0f/|plain|sgd|dampening ignored"
        "sgdrow|sgd|s/while (t + 1 < count \&\& table.block0\[t + 1\] <= blk) {/while (t + 1 < count \&\& table.block0[t + 1] < blk) {/|plain|sgd|a tensor's first block given to the tensor before"
        "sgdper|sgd|s/const unsigned long long i = first + (unsigned long long)k \* blockDim.x;/const unsigned long long i = first + (unsigned long long)k;/|plain|sgd|a thread's elements one apart instead of a block apart"
        "ceoff|cross_entropy|s/const T off = smoothing \/ (T)k;/const T off = smoothing \/ (T)(k + 1);/|plain|cross_entropy|smoothing spread over K + 1 classes"
        "cedl|cross_entropy|s/const T scale = dloss\[0\] \* inv_n;/const T scale = inv_n;/|plain|cross_entropy|upstream dL ignored"
        "cemax|cross_entropy|0,/for (unsigned int j = 1; j < k; ++j) {/s//for (unsigned int j = 1; j + 1 < k; ++j) {/|plain|cross_entropy|row max skips the last class (exp overflows)"
        "reflect|augment|s/62 - i/63 - i/|plain|augment|reflect padding repeats the edge"
        "cutout|augment|s/y < cutout_y + 4/y <= cutout_y + 4/|plain|augment|cutout 9 rows high"
        "recip|augment|s#__fdiv_rn((float)p, 255.0f)#__fmul_rn((float)p, 1.0f / 255.0f)#|plain|augment|times 1/255 instead of / 255 (not bit-exact)"
        "label|augment|0,/labels\[i\] = (unsigned int)rec\[0\];/s//labels[i] = (unsigned int)rec[1];/|plain|augment|label from a pixel byte"
        "ttaflip|augment|s/within - x + (31 - x)/within - x + (30 - x)/|asan|augment|flipped test image off by one column"
        "relu0|elementwise|0,/y\[i\] = v > T(0) ? v : T(0);/s//y[i] = v >= T(0) ? v : T(0);/|plain|elementwise|relu keeps -0"
        "gstride|elementwise|s/i += (unsigned long long)blockDim.x \* gridDim.x)/i += (unsigned long long)blockDim.x)/|plain|elementwise|grid stride without gridDim"
        "rne|bf16|s/(u + 0x7fffu + ((u >> 16) \& 1u)) >> 16/(u + 0x8000u) >> 16/|plain|bf16|f32->bf16 rounds half up, not to even"
        "nan|bf16|s/> 0x7f800000u/> 0x7f800001u/|plain|bf16|a NaN pattern taken for a number"
        "brelu|bf16|s/to_f32(x\[i\]) > 0.0f ? x\[i\]/to_f32(x[i]) >= 0.0f ? x[i]/|plain|bf16|bf16 relu keeps -0"
        "bnrvecch|batch_norm_relu|s/c\[k\] = nhwc ? c0 + k : c0;/c[k] = c0;/|plain|batch_norm_relu|vectorised NHWC pass uses one channel for its whole group"
        "bnrfixc0|batch_norm_relu|s/const unsigned int c0 = (first % (c_count \/ VEC)) \* VEC;/const unsigned int c0 = (first % (c_count \/ VEC));/|plain|batch_norm_relu|vectorised NHWC passes keep the wrong channel group per thread"
        "bnrfixany|batch_norm_relu|s/return nhwc \&\& (blockDim.x \* gridDim.x) % row_groups == 0;/return nhwc;/|plain|batch_norm_relu|vectorised NHWC passes keep one channel group per thread whatever the grid"
        "bnrsumst|batch_norm_relu|s/st\[k\] = bnr_stats_of(stats, c_count, g \* VEC + k);/st[k] = bnr_stats_of(stats, c_count, g + k);/|plain|batch_norm_relu|vectorised backward sums read the wrong channels' statistics"
        "bnrvecpack|batch_norm_relu|s/e\[2 \* k\] = (bf16)(w\[k\] \& 0xffffu);/e[2 * k] = (bf16)(w[k] >> 16);/|plain|batch_norm_relu|bf16 pairs unpacked in the wrong order"
        "bnrvtree|batch_norm_relu|s/const unsigned int o = t + w \* groups;/const unsigned int o = t + w;/|plain|batch_norm_relu|vectorised reductions' tree merges the wrong thread's channels"
        "bnrvrcp|batch_norm_relu|s/const float f = 1.0f \/ cn;/const float f = 1.0f \/ (cn + 1.0f);/|plain|batch_norm_relu|vectorised Welford update with the count off by one"
        "bnrvtail|batch_norm_relu|0,/            if (j + u \* rows < j1) {/s//            {/|asan|batch_norm_relu|vectorised statistics load past the split's last row"
        "bnrfin|batch_norm_relu|s/for (unsigned int first = ty; first < splits; first += BNR_FIN_UNROLL \* BNR_FIN_Y) {/for (unsigned int first = ty; first < splits; first += 2 * BNR_FIN_UNROLL * BNR_FIN_Y) {/|plain|batch_norm_relu|finalize skips half the splits"
        "bnrfinu|batch_norm_relu|s/const unsigned int s = first + u \* BNR_FIN_Y;/const unsigned int s = first + u;/|plain|batch_norm_relu|finalize's unrolled loads take neighbouring splits instead of a lane stride apart"
        "bf16x8|bf16|s/return (bf16)(k % 2 ? w >> 16 : w \& 0xffffu);/return (bf16)(k % 2 ? w \& 0xffffu : w >> 16);/|plain|bf16|8-per-thread kernels read each word's halves swapped"
        "bf16tail|bf16|0,/const unsigned long long i = n \/ 8 \* 8 + t;/s//const unsigned long long i = n \/ 8 * 8 + t + 1;/|asan|bf16|add_bf16_x8's tail starts one element late"
        "bnreval|batch_norm_relu|s/const A m = running_mean\[c\];/const A m = running_var[c];/|plain|batch_norm_relu|evaluation's statistics take the running variance for the mean"
        "mpvlane|max_pool|s/(words\[l \/ 2\] >> (16 \* (l % 2))) << 16/(words[l \/ 2] >> 16) << 16/|plain|max_pool|vectorised pool compares the high bf16 half for both lanes of a word"
        "mpvword|max_pool|s/\] .= dwords\[l \/ (LANES \/ 4)\]/] ^= dwords[l % 4]/|plain|max_pool|vectorised pool takes dy from the wrong word"
        "mpvgroup|max_pool|s/return ((ni \* h + i \* k) \* w + j \* k) \* groups + g;/return ((ni * h + i * k) * w + j * k) * groups;/|plain|max_pool|vectorised pool reads the first channel group for every group"
        "mpvfwd|max_pool|s/out\[l \/ (LANES \/ 4)\] .= best_bits\[l\];/out[l \/ (LANES \/ 4)] = best_bits[l];/|plain|max_pool|vectorised forward keeps only one bf16 half of each word"
        "mptie|max_pool|s/if (v > best_v /if (v >= best_v /|plain|max_pool|pool backward routes ties to the last maximum"
        "mpnan|max_pool|s/(v != v \&\& best_v == best_v)/false/|plain|max_pool|pool backward lets a number beat a NaN"
        "mpnhwc|max_pool|s/? ((n \* hh + h) \* ww + w) \* cc + c/? ((n * hh + w) * ww + h) * cc + c/|plain|max_pool|NHWC index with h and w swapped"
        "mpedge|max_pool|0,/for (unsigned int q = 0; q < k; ++q) {/s//for (unsigned int q = 1; q < k; ++q) {/|asan|max_pool|window search skips its first column"
        "mpidxpack|max_pool|s/pos\[l \/ 4\] .= best\[l\] << (8 \* (l % 4));/pos[l \/ 4] += best[l] << (8 * (l % 2));/|plain|max_pool|pool forward packs index bytes into the wrong byte"
        "mpidxword|max_pool|s/if (((pos\[l \/ 4\] >> (8 \* (l % 4)))/if (((pos[0] >> (8 * (l % 4)))/|plain|max_pool|pool backward reads the first word's index bytes for every lane"
        "wcperm|bf16|s/to_bf16(w\[(k \* c + ch) \* rs + p\]);/to_bf16(w[(k * rs + p) * c + ch]);/|plain|bf16|weight copies read the weight in the copy's order"
        "wcblock|bf16|s/while (u + 1 < count \&\& table.block0\[u + 1\] <= blk) {/while (u + 1 < count \&\& table.block0[u + 1] < blk) {/|plain|bf16|weight copies give a tensor's first block to the tensor before"
        "wcgrad|bf16|s/= to_f32(dw\[(k \* rs + p) \* c + ch\]);/= to_f32(dw[(k * c + ch) * rs + p]);/|plain|bf16|weight gradients read the copy's gradient in the weight's order"
        "wctpair|bf16|s/out2\[i\] = (unsigned int)to_bf16(row\[ch \* rs + p\])/out2[i] = (unsigned int)to_bf16(row[(ch + 1) * rs + p])/|plain|bf16|tiled weight copy writes one channel into both halves of a pair"
        "wctrow|bf16|s/reinterpret_cast<const float\*>(table.src\[t\]) + (unsigned long long)k \* n;/reinterpret_cast<const float*>(table.src[t]);/|plain|bf16|tiled weight copy reads the first output channel's row for every block"
        "wctsync|bf16|/row\[j\] = w\[j\];/{n;n;s/__syncthreads();//}|tsan|bf16|tiled weight copy reads its row before the block stored it (data race)"
        "wctblk|bf16|s/while (t + 1 < count \&\& table.block0\[t + 1\] <= blk) {/while (t + 1 < count \&\& table.block0[t + 1] < blk) {/|plain|bf16|tiled weight copy gives a tensor's first block to the tensor before"
        "wctodd|bf16|s/if (c % 2 == 0) {/if (c % 2 == 1) {/|plain|bf16|tiled weight copy stores pairs for an odd channel count"
        "sgdkrsc|sgd|s/return (k \* rs + p) \* c + ch;/return (k * c + ch) * rs + p;/|plain|sgd|copy gradients read in the weight's order instead of the copy's"
        "bnrunroll|batch_norm_relu|s/const unsigned int gu = g + u \* stride;/const unsigned int gu = g + u;/|plain|batch_norm_relu|unrolled elementwise passes take neighbouring groups instead of a stride apart"
        "bnrskip|batch_norm_relu|s/y\[i\] = skip ? plus(r, skip\[i\]) : r;/y[i] = r;/|plain|batch_norm_relu|the output pass drops the residual input"
        "bnrskipv|batch_norm_relu|s/ys\[k\] = plus(ys\[k\], ss\[k\]);/ys[k] = plus(ys[k], ss[0]);/|plain|batch_norm_relu|vectorised output pass adds the residual's first lane to every lane"
        "bnrskiprnd|batch_norm_relu|s/narrow(__fadd_rn(widen(r), widen(s)), \&out);/out = (bf16)((__float_as_uint(__fadd_rn(widen(r), widen(s)))) >> 16);/|plain|batch_norm_relu|bf16 residual sum truncated instead of rounded to even"
        "mpidxpos|max_pool|s/mp_take<LANES>(x\[base + p \* row + q \* col\], p \* k + q,/mp_take<LANES>(x[base + p * row + q * col], q * k + p,/|plain|max_pool|pool forward saves window positions transposed (k > 2)"
        "mp2pos|max_pool|s/mp_take<LANES>(v1, 1, best_v/mp_take<LANES>(v1, 2, best_v/|plain|max_pool|2x2 pool forward saves the top-right position as the bottom-left"
        "mp2load|max_pool|s/v3 = x\[base + row + col\];/v3 = x[base + row];/|plain|max_pool|2x2 pool forward loads the bottom-left vector for the bottom-right"
        "c3tap|conv_c3|s/const int tap = (r \* 3 + s) \* 3 + c;/const int tap = (s * 3 + r) * 3 + c;/|plain|conv_c3|first-conv kernels take the transposed tap's weight and gradient slot"
        "c3wpair|conv_c3|s/wt\[t\]\[1\] = mine ? c3_widen(w\[(2 \* lane + 1) \* C3_TAPS + t\])/wt[t][1] = mine ? c3_widen(w[2 * lane * C3_TAPS + t])/|plain|conv_c3|first-conv forward gives a lane's second channel the first one's weights"
        "c3shift|conv_c3|s/const unsigned int i = i0 + r - 1, j = j0 + s - 1;/const unsigned int i = i0 + r - 1, j = j0 + s;/|plain|conv_c3|first-conv kernels stage the window one column to the right"
        "c3pair|conv_c3|s/acc\[tap\]\[1\] = __fmaf_rn(cols\[s\]\[r \* 3 + c\], d1,/acc[tap][1] = __fmaf_rn(cols[s][r * 3 + c], d0,/|plain|conv_c3|first-conv weight gradient uses one dy value for both channels of a pair"
        "c3tree|conv_c3|s/slot\[0\] = __fadd_rn(slot\[0\], acc\[t\]\[0\]);/slot[0] = acc[t][0];/|plain|conv_c3|first-conv weight gradient drops half its rows' sums"
        "c3sync|conv_c3|/red\[row\]\[t \* C3_MAX_O + 2 \* lane + 1\] = acc\[t\]\[1\];/{n;n;n;s/__syncthreads();//}|tsan|conv_c3|first-conv weight gradient adds rows before the others stored (data race)"
        "c3finish|conv_c3|s/for (unsigned int first = lane; first < blocks;/for (unsigned int first = lane + C3_FIN_LANES; first < blocks;/|plain|conv_c3|first-conv weight gradient skips each lane's first block's sums"
        "c3finu|conv_c3|s/const unsigned int q = first + u \* C3_FIN_LANES;/const unsigned int q = first + u;/|plain|conv_c3|first-conv weight gradient's unrolled loads take neighbouring blocks instead of a lane stride apart"
        "c3fintree|conv_c3|s/lanes\[lane\]\[k\] = __fadd_rn(lanes\[lane\]\[k\], lanes\[lane + w\]\[k\]);/lanes[lane][k] = __fadd_rn(lanes[lane][k], lanes[lane][k]);/|plain|conv_c3|first-conv weight gradient's lane tree adds a lane to itself"
        "emaswap|elementwise|s/avg\[i\] = __fadd_rn(__fmul_rn(keep, avg\[i\]), __fmul_rn(take, x\[i\]));/avg[i] = __fadd_rn(__fmul_rn(take, avg[i]), __fmul_rn(keep, x[i]));/|plain|elementwise|moving average with its two weights swapped"
        "c3finsync|conv_c3|/lanes\[lane\]\[k\] = sum;/{n;s/__syncthreads();//}|tsan|conv_c3|first-conv weight gradient's lane tree reads lanes before they are stored (data race)"
        "c3rotate|conv_c3|s/pixel(t + 1, b, c, a);/pixel(t + 1, c, b, a);/|plain|conv_c3|first-conv walk swaps the window's left and middle columns on its second step"
        "c3walkend|conv_c3|s/if (t + 1 == len) break;/(void)0;/|asan|conv_c3|first-conv walk goes one pixel past a row whose length leaves one step of three"
        "c3pad|conv_c3|s/if (i < h \&\& j < wd) {/if (i < h) {/|asan|conv_c3|first-conv staging reads past the image's left and right edges instead of padding"
        "c3tile|conv_c3|s/i0 = tile \/ across % down \* C3_ROWS;/i0 = tile \/ across % down;/|plain|conv_c3|first-conv tiles start at the row tile's index instead of 8 rows per tile"
        "c3narrow|conv_c3|s/return (c3_rounded(lo) >> 16)/return (c3_rounded(hi) >> 16)/|plain|conv_c3|first-conv forward stores a pair's second channel in both halves"
        "c3dyrow|conv_c3|s/dy\[((b \* h + i0 + r) \* wd + j0) \* half + e\]/dy[((b * h + i0) * wd + j0) * half + e]/|plain|conv_c3|first-conv weight gradient stages every tile row's dy from the tile's first row"
        "c3dystride|conv_c3|s/const unsigned int dd = d\[t \* half\];/const unsigned int dd = d[t * C3_HALF];/|plain|conv_c3|first-conv weight gradient reads staged dy at 64 channels' stride whatever O"
        "c3dylen|conv_c3|s/e < words ? dy/e <= words ? dy/|asan|conv_c3|first-conv weight gradient stages one word past each tile row (out of bounds at dy's end)"
        "c3stagesync|conv_c3|/c3_stage_x(xs, x, b, i0, j0, h, wd);/{n;s/__syncthreads();//}|tsan|conv_c3|first-conv forward walks the tile before it is staged (data race)"
        "c3topsync|conv_c3|s/__syncthreads();  \/\/ the previous tile's windows/\/\/ the previous tile's windows/|tsan|conv_c3|first-conv kernels stage the next tile while warps still read the last (data race)"
    )
    mkdir -p build/mut
    caught=0 missed=0 stale=0
    for m in "${mutants[@]}"; do
        IFS='|' read -r name file expr variant t why <<<"$m"
        src="build/mut/$name.cu"
        sed "$expr" "../../ptx/$file.cu" >"$src"
        if cmp -s "$src" "../../ptx/$file.cu"; then
            echo "selftest: STALE   $name: its sed no longer matches ptx/$file.cu (the kernel changed): update run.sh"
            stale=$((stale + 1))
            continue
        fi
        if ! build "$variant" "$t" "build/mut/$name.bin" -DKERNEL_SRC="\"$here/$src\"" 2>"build/mut/$name.log"; then
            echo "selftest: mutant $name does not compile (see build/mut/$name.log)"
            missed=$((missed + 1))
            continue
        fi
        # (a subshell that reports a crash of the binary to /dev/null, not to the terminal)
        rc=$( (timeout 300 "build/mut/$name.bin" --quick >"build/mut/$name.out" 2>&1; echo $?) 2>/dev/null)
        if [ "$rc" = 0 ]; then
            echo "selftest: MISSED  $name ($variant): $why"
            missed=$((missed + 1))
        else
            reason="$(grep -m1 -E 'FAIL|ThreadSanitizer|AddressSanitizer|runtime error|emu:' "build/mut/$name.out" | cut -c1-110)"
            [ -n "$reason" ] || reason="crashed"
            echo "selftest: caught  $name ($variant, exit $rc): $why -- $reason"
            caught=$((caught + 1))
        fi
    done
    echo "selftest: $caught caught, $missed missed, $stale stale"
    [ "$missed" = 0 ] || exit 1
    exit 0
fi

variants=(plain)
[ "$quick" = 1 ] || variants+=(asan tsan)
for v in "${variants[@]}"; do
    for t in "${TESTS[@]}"; do
        if ! build "$v" "$t" "build/$t.$v"; then
            echo "BUILD FAILED: $t ($v)"
            fail=1
            continue
        fi
        args=()
        [ "$t" = batch_norm_relu ] && [ "$big" = 1 ] && [ "$v" = plain ] && args+=(--big)
        start=$(date +%s)
        out="build/$t.$v.out"
        if "build/$t.$v" "${args[@]}" >"$out" 2>&1; then
            echo "[$v] $(tail -n1 "$out") ($(( $(date +%s) - start )) s)"
        else
            rc=$?
            echo "[$v] $t FAILED (exit $rc); its output: $here/$out"
            grep -E "^ *FAIL|Sanitizer|runtime error|^emu:" "$out" | head -20
            fail=1
        fi
    done
done
[ "$fail" = 0 ] && echo "kernel-emu: all passed" || echo "kernel-emu: FAILURES"
exit "$fail"
