#!/usr/bin/env bash
# Run ON THE GPU MACHINE (no Rust there: it uses the binaries of scripts/gpu/prepare.sh).
#
#   bash scripts/gpu/on-gpu.sh stage            unpack the carried devbin/bin/ to /root/devbin and the
#                                                devbin/data*/ files (packed) to /root/cifar10/*.bin
#   bash scripts/gpu/on-gpu.sh tests            the GPU tests -> cuda-tests-<date>.txt
#   bash scripts/gpu/on-gpu.sh train [SEEDS]    24-epoch runs -> train-24ep-<date>-seed<N>.log + runs/seed<N>/
#   bash scripts/gpu/on-gpu.sh profile [FLAGS]  time per operation of one step -> profile-<date>.txt
#                                                (e.g. profile --cuda-graph, profile --bf16 --channels-last --cuda-graph)
#   bash scripts/gpu/on-gpu.sh torchprof [FLAGS] PyTorch's time per operation and per kernel of the same step
#                                                (bench/torch_step_profile.py) -> torch-profile-<date>.txt
#                                                (e.g. torchprof torchprof --fp32: two variants, one call)
#   bash scripts/gpu/on-gpu.sh degrade [Q]      the data in use re-encoded through JPEG at quality Q (55)
#                                                -> /root/cifar10-qQ (e.g. degrade 55 train 9 -- --data /root/cifar10-q55)
#   bash scripts/gpu/on-gpu.sh official [SEEDS] [-- ARGS]
#                                                the official CIFAR-10 files, if `stage` found any, checked and
#                                                prepared (bench/official_cifar.py) -> /root/cifar10-official;
#                                                the later steps read them; then `train SEEDS` (on the staged
#                                                copy if none passed), and with them the first seed once more on
#                                                them re-encoded at JPEG quality 75 (how ../shared/cifar10 was made)
#   bash scripts/gpu/on-gpu.sh lrfind [FLAGS]   the LR range test alone -> lr-find-<date>.txt
#                                                (e.g. lrfind lrfind --out-scale 1: two settings, one call)
#   bash scripts/gpu/on-gpu.sh sanitize BIN [FILTER]  a test binary under compute-sanitizer -> sanitize-<date>.txt
#   bash scripts/gpu/on-gpu.sh pick             of this day's `profile` steps whose flags are only convolution
#                                                choices (--first-conv, --cudnn-graph, --cudnn-search=timed), the
#                                                fastest captured step: its flags go to every later train and sbs
#                                                -> pick-<date>.txt
#   bash scripts/gpu/on-gpu.sh sbs SEED... [-- ARGS]  bench/side_by_side.py (ours, cross-evaluation, PyTorch)
#                                                -> sbs/, then sbs-2/, ... (table, JSON and logs written after every run)
#   bash scripts/gpu/on-gpu.sh stage tests train 0
#
# A command with any step but `stage` ends with the page of scripts/gpu/summarize.py over the
# results (summary-<date>.md): the GPU tests, every run's accuracy and times, issue 6's and 7's bars.
#
# Every result goes to /root/results on the device (kept while the machine is warm), and after
# each step the whole folder but the checkpoints (*.safetensors, 25 MiB each at full width, and a
# *.tmp one a run killed while it saved leaves) is
# packed into $OUT/results.tgz: the tool brings back at most 8 files of at most 16 MiB, so one
# archive, rewritten after every step, comes back whole even if a later step is cut short.
# Unpack it here with `tar -xzf results.tgz -C DIR`.
#
# Modes chain in one command. BUDGET_S=N (seconds) bounds the whole command: each step's time
# limit is cut to what is left (less a 15 s margin for the results to come back), and a step with
# under 30 s left is skipped with a line saying so. Use it with the call's timeout_s, so that a
# slow step ends cleanly instead of the call being killed in the middle of writing.
#
# The binaries persist between calls in /root/devbin (the machine keeps its files while warm).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
OUT="${OUT:-/tmp/out}"
# Where the step's files live: /root on the GPU machine (GPU_ROOT elsewhere: the tests of this
# script, tests/gpu_script.rs, run it with a stand-in model in a folder of their own).
GPU_ROOT="${GPU_ROOT:-/root}"
RES="$GPU_ROOT/results"
mkdir -p "$OUT" "$RES" "$GPU_ROOT/cifar10" "$GPU_ROOT/devbin"
# The budget counts from here: env.sh's first library search on a fresh machine is part of it.
start=$SECONDS
# shellcheck source=/dev/null
source scripts/gpu/env.sh
export CIFAR10_DIR="$GPU_ROOT/cifar10"
# The data the steps read, and a word for their output names: the staged copy (../shared/cifar10,
# decoded from JPEG) until an `official` step finds the official files.
DATA="$GPU_ROOT/cifar10"
DTAG=""
# Flags every later `train` and `sbs` adds for our binary: `train` adds --plain when a recipe run
# of the fast path fails (see `fast_path_failed`), so that one bad kernel cannot spoil the rest of a
# call's runs (the `profile` steps keep their own flags). (Our first-convolution kernels, whose
# failed test added --first-conv=cudnn here, are no longer on by default: cuDNN is.)
OURS_FALLBACK=()
# Flags a `pick` step chose for every later `train` and `sbs` (how the convolutions run), unless
# a step names such a flag itself.
OURS_CHOSEN=()
day="$(date -u +%Y-%m-%d)"

# The time limit for a step that wants $1 seconds: $1, or what is left of BUDGET_S less 15 s.
# Prints nothing (and the caller skips the step) when under 30 s are left.
limit() {
    local want="$1"
    [ -z "${BUDGET_S:-}" ] && { echo "$want"; return; }
    local left=$(( BUDGET_S - (SECONDS - start) - 15 ))
    [ "$left" -lt 30 ] && { echo "on-gpu.sh: ${left}s left of BUDGET_S=$BUDGET_S: skipped" >&2; return; }
    [ "$left" -lt "$want" ] && want="$left"
    echo "$want"
}

stage() {
    if [ -f devbin/bin/devbin.tar.xz ]; then
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' devbin/bin/devbin.tar.xz "$GPU_ROOT/devbin"
    fi
    # Each carried part: its packed files (scripts/gpu/prepare.sh) unpacked to plain .bin files,
    # then checked against the sums made where they were packed.
    for d in devbin/data*/; do
        [ -f "$d/sums.txt" ] || continue
        "$GPU_ROOT/devbin/cifar_pack" unpack "$d" "$GPU_ROOT/cifar10" || { echo "on-gpu.sh: unpacking $d failed" >&2; exit 3; }
        (cd "$GPU_ROOT/cifar10" && sha256sum -c "$repo/$d/sums.txt") || { echo "on-gpu.sh: $d unpacked wrong" >&2; exit 3; }
    done
    ls -la "$GPU_ROOT/cifar10" "$GPU_ROOT/devbin"
    # Where prepare.sh took the files from (the first part carries it): kept for summarize.py.
    if [ -f devbin/data1/source.txt ]; then
        cp devbin/data1/source.txt "$RES/staged-source-$day.txt"
        echo "on-gpu.sh: the staged data: $(cat devbin/data1/source.txt)"
    fi
    # The official CIFAR-10 files, if this machine has them anywhere (a torchvision or Hugging Face
    # cache, say): ../shared/cifar10 is decoded from JPEG, and one run on the originals would say
    # what that costs (issue 6). Once per machine (both staging calls run `stage`).
    # One pass of find, up to 20 s: the usual places first (a dataset volume may be mounted
    # anywhere), then the whole tree, every mount included. It lists every path whose name says
    # cifar, and every parquet or arrow file below one (Hugging Face's files are named
    # train-00000-of-00001.parquet and the like), in cifar-names-<date>.txt (the first 300, for a
    # person to read). The candidates for `official` (bench/official_cifar.py), each once in the
    # order found, go to cifar-search-<date>.txt: the torchvision folders and archives, and the
    # folders of those parquet or arrow files (the folder above, for a train/ or test/ one).
    if [ ! -f "$RES/cifar-search-$day.txt" ]; then
        local names; names="$(mktemp)"
        timeout 20 find /root /data /datasets /dataset /workspace /mnt /home /opt /srv /tmp / \
            \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path "$GPU_ROOT/cifar10" -o -path "$repo" \) -prune -o \
            \( -iname '*cifar*' -o \( -ipath '*cifar*' \( -name '*.parquet' -o -name '*.arrow' \) \) \) -print 2>/dev/null \
            | awk '!seen[$0]++' > "$names"
        { echo "== paths named *cifar* on this machine, and parquet/arrow files below them ($(wc -l < "$names") found in up to 20 s; the first 300)";
          head -n 300 "$names"; } > "$RES/cifar-names-$day.txt"
        { echo "== official CIFAR-10 candidates on this machine (from cifar-names-$day.txt)";
          official_candidates "$names"
          echo "== (end of list)"; } | tee "$RES/cifar-search-$day.txt"
        rm -f "$names"
    fi
    # Our binaries were built elsewhere: check at once that this machine's C library runs them.
    if [ -x "$GPU_ROOT/devbin/model" ]; then
        ldd --version 2>&1 | head -n 1
        "$GPU_ROOT/devbin/model" --help > /dev/null && echo "on-gpu.sh: $GPU_ROOT/devbin/model runs here"
    fi
}

# The candidates for `official` among the paths listed in FILE (one per line, as `stage`'s find
# prints them), each once, in the order found: torchvision's folders (cifar-10-batches-py,
# cifar-10-batches-bin) and archives (cifar-10-*.tar.gz), and the folders of parquet or arrow
# files (the folder above, for a train/ or test/ one, where Hugging Face's layouts keep them).
official_candidates() {
    awk '{ p = $0; n = p; sub(/.*\//, "", n)
           if (p ~ /\.(parquet|arrow)$/) { sub(/\/[^\/]*$/, "", p); if (p ~ /\/(train|test)$/) sub(/\/[^\/]*$/, "", p) }
           else if (n != "cifar-10-batches-bin" && n != "cifar-10-batches-py" && n !~ /^cifar-10-.*\.tar\.gz$/) next
           if (!seen[p]++) print p }' "$1"
}

# Rewrite $OUT/results.tgz from $RES (checkpoints left out).
pack() {
    tar -czf "$OUT/results.tgz.part" --exclude='*.safetensors' --exclude='*.tmp' -C "$RES" . && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
    echo "on-gpu.sh: packed $(du -h "$OUT/results.tgz" | cut -f1) of results into \$OUT/results.tgz"
}

# Steps other than `stage` need what the staging calls left; a machine that went cold in between
# (30 s idle) has lost it, and every step would fail: stop at once and say so.
need_staged() {
    local n; n=$(ls "$GPU_ROOT"/cifar10/*.bin 2>/dev/null | wc -l)
    if [ "$n" -ne 6 ] || [ ! -x "$GPU_ROOT/devbin/model" ]; then
        echo "on-gpu.sh: $GPU_ROOT/cifar10 holds $n of the 6 .bin files and $GPU_ROOT/devbin/model is $([ -x "$GPU_ROOT/devbin/model" ] || echo 'not ')there: stage again (the machine went cold between calls?)" >&2
        exit 3
    fi
}

header() {
    nvidia-smi -L
    nvidia-smi --query-gpu=driver_version --format=csv,noheader | sed 's/^/driver version: /'
    date -u
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

# The four GPU test binaries run at once (one GPU, one process each: about the longest one's
# time instead of the sum); their outputs are then written one after the other, in order.
tests() {
    local f="$RES/cuda-tests-$day.txt" tmp t_s
    # A hung test must not eat the whole call (600 s): TEST_TIMEOUT s for all four (default 240).
    t_s="$(limit "${TEST_TIMEOUT:-240}")"; [ -n "$t_s" ] || return 0
    tmp="$(mktemp -d)"
    local bins=(test-cuda test-cuda_ops test-cuda_gradcheck test-cuda_train)
    # cuDNN's own log of its errors and warnings (CUDNN_LOGLEVEL_DBG=2), one file per binary:
    # what a failing descriptor attribute was, where a status alone does not say.
    for t in "${bins[@]}"; do
        ( CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG="$tmp/$t.cudnn-log" \
          timeout -k 10 "$t_s" "$GPU_ROOT/devbin/$t" --ignored --test-threads=1 --nocapture > "$tmp/$t.txt" 2>&1
          echo "== $t exit status $? (124: it ran into its limit of ${t_s} s)" >> "$tmp/$t.txt" ) &
    done
    wait
    {
        header
        echo "(the four binaries ran at the same time, each with --test-threads=1)"
        for t in "${bins[@]}"; do
            echo "== $t --ignored --test-threads=1 --nocapture"
            cat "$tmp/$t.txt"
        done
    } > "$f" 2>&1
    for t in "${bins[@]}"; do
        # The first 256 KiB of each non-empty log (cuDNN can repeat itself at length).
        if [ -s "$tmp/$t.cudnn-log" ]; then head -c 262144 "$tmp/$t.cudnn-log" > "$RES/cudnn-log-$t-$day.txt"; fi
    done
    grep -E '^test |test result|exit status' "$f"
    # The moving average's kernel (--ema) must give the CPU's bits; if not, the later runs do
    # without it (it only changes what is evaluated) rather than report a broken average.
    if [[ " ${TRAIN_ARGS[*]} " == *" --ema "* ]] && ! test_passed "$tmp/test-cuda_ops.txt" ema_update_matches_the_cpu_exactly; then
        local kept=() a
        for a in "${TRAIN_ARGS[@]}"; do [ "$a" = --ema ] || kept+=("$a"); done
        TRAIN_ARGS=("${kept[@]}")
        echo "on-gpu.sh: ema_update_matches_the_cpu_exactly did not pass: every later train runs without --ema (TRAIN_ARGS now: ${TRAIN_ARGS[*]})" | tee -a "$f"
    fi
    rm -rf "$tmp"
}

# Whether test NAME passed in the libtest output FILE (--test-threads=1 --nocapture, where a
# test's own output can come between its `test NAME ... ` and its `ok`): it ran, the binary
# that ran it reached its `test result:` line (no crash, no timeout), and NAME is neither in
# the `failures:` list nor a panicking thread. FILE may hold several binaries' output, each
# from its `== test-...` line (cuda-tests-<date>.txt): only NAME's binary's part counts, so
# that another binary's `test result:` cannot stand for a crash of NAME's.
test_passed() {
    local file="$1" name="$2" part
    part="$(awk -v t="test $name ... " '
        /^== test-/ { if (found) exit; part = "" }
        { part = part $0 "\n" }
        index($0, t) == 1 { found = 1 }
        END { if (found) printf "%s", part }' "$file")"
    [ -n "$part" ] && grep -q '^test result: ' <<< "$part" \
        && ! grep -qx "    $name" <<< "$part" && ! grep -q "^thread '$name'" <<< "$part"
}

# Extra flags for `model train`, e.g. TRAIN_ARGS="--lr-max 0.4 --lr-min 0.04" (word-split).
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"

# `train 0 1 2`: seeds 0-2 with TRAIN_ARGS, logs train-24ep-<date>-seed<N>.log, run folders
# runs/seed<N>. `train 11 12 -- --weight-decay 1e-3`: those flags too (after TRAIN_ARGS), and
# their words in the names (train-24ep-<date>-seed11-weight-decay-1e-3.log, runs/seed11-...),
# so that one command can compare settings. A recipe run (no such flags) whose fast GPU path
# failed (`fast_path_failed`) is kept under another name and run again: without the first
# convolution a `pick` step chose, if it had one, else with --plain added; and so is every later
# train and sbs of the call. The OURS_FALLBACK flags of each run that ended as it
# should go beside its log, in .flags (`ran_with`; `official` pairs runs by them).
train() {
    local seeds=() extra=() seen="" a
    for a in "$@"; do
        if [ -n "$seen" ]; then extra+=("$a"); elif [ "$a" = "--" ]; then seen=1; else seeds+=("$a"); fi
    done
    [ ${#seeds[@]} -eq 0 ] && seeds=(0)
    # The data in use unless the flags name another folder (`-- --data /root/cifar10-q55`).
    local data=(--data "$DATA")
    for a in "${extra[@]}"; do [ "$a" = "--data" ] && data=(); done
    for s in "${seeds[@]}"; do
        local name rc
        name="$(train_name "$s" "${extra[@]}")"
        local log="$RES/train-24ep-$day-$name.log"
        # /root/results outlives a call while the machine is warm: a seed's run an earlier call
        # (or step) finished is kept, not overwritten, and its .flags stand for it. One that did
        # not end as it should (cut by the budget, say: no .flags) is kept apart, and runs again.
        if [ -e "$log" ] && [ -e "${log%.log}.flags" ]; then
            echo "on-gpu.sh: $(basename "$log") is there already (written by an earlier call or step on this machine): seed $s not run again"
            continue
        fi
        if [ -e "$log" ]; then
            local unfinished="-unfinished" k=2
            while [ -e "${log%.log}$unfinished.log" ] || [ -e "$RES/runs/$name$unfinished" ]; do unfinished="-unfinished-$k"; k=$((k + 1)); done
            mv "$log" "${log%.log}$unfinished.log"
            [ -d "$RES/runs/$name" ] && mv "$RES/runs/$name" "$RES/runs/$name$unfinished"
            echo "on-gpu.sh: $(basename "$log") is there from an earlier call or step, but that run did not end as it should: kept as $(basename "${log%.log}")$unfinished.log, and seed $s runs again"
        fi
        local chosen=("${OURS_CHOSEN[@]}")
        names_a_pick_flag "${extra[@]}" && chosen=()
        train_run "$name" "$log" "${data[@]}" --seed "$s" "${TRAIN_ARGS[@]}" "${chosen[@]}" "${OURS_FALLBACK[@]}" "${extra[@]}"
        rc=$?
        [ "$rc" -eq "$NO_TIME" ] && return 0
        # A failed recipe run runs again: first without the first convolution `pick` chose, if it
        # had one (that choice is dropped for the rest of the call), then with --plain (at most
        # twice: a --plain run is never judged).
        while [ ${#extra[@]} -eq 0 ] && fast_path_failed "$log" "$rc"; do
            # The failed run is kept under a name no earlier one has, so that the usual name never
            # holds it, whether or not there is time to run the seed again.
            local kept="-fast-path-failed" k=2 t_s fix
            while [ -e "${log%.log}$kept.log" ] || [ -e "$RES/runs/$name$kept" ]; do kept="-fast-path-failed-$k"; k=$((k + 1)); done
            mv "$log" "${log%.log}$kept.log"
            [ -d "$RES/runs/$name" ] && mv "$RES/runs/$name" "$RES/runs/$name$kept"
            if [ ${#chosen[@]} -gt 0 ]; then
                fix="without ${chosen[*]} (pick's choice, dropped for the rest of the call)"
                chosen=()
                OURS_CHOSEN=()
            else
                add_fallback --plain
                fix="with ${OURS_FALLBACK[*]}"
            fi
            local why="seed $s's run of the fast path crashed, hung or ended below ${ACC_FLOOR:-80}% (exit status $rc; kept as $(basename "${log%.log}")$kept.log)"
            # A rerun needs MIN_RERUN_S of the budget (default 90 s: a plain 24-epoch run's epochs
            # took 32 s on the H200, plus the LR range test and start-up), or the whole of
            # TRAIN_TIMEOUT if that is less.
            local need="${MIN_RERUN_S:-90}"
            [ "$need" -gt "$train_timeout" ] && need="$train_timeout"
            t_s="$(limit "$train_timeout" 2> /dev/null)"
            if [ -z "$t_s" ] || [ "$t_s" -lt "$need" ]; then
                echo "on-gpu.sh: $why; the budget has ${t_s:-under 30} s left, under the $need s a rerun $fix needs" | tee -a "$RES/fallback-$day.txt"
                pack
                return 0
            fi
            echo "on-gpu.sh: $why: it runs again $fix, and so does every later train and sbs of this call" | tee -a "$RES/fallback-$day.txt"
            train_run "$name" "$log" "${data[@]}" --seed "$s" "${TRAIN_ARGS[@]}" "${chosen[@]}" "${OURS_FALLBACK[@]}"
            rc=$?
            [ "$rc" -eq "$NO_TIME" ] && return 0
        done
        # A run that ended as it should: the flags the script added to it (pick's choice and the
        # fallback's), for `official`'s pair and a later call.
        local added=("${chosen[@]}" "${OURS_FALLBACK[@]}")
        [ "$rc" -eq 0 ] && printf '%s\n' "${added[*]}" > "${log%.log}.flags"
        pack
    done
}

# The name `train` gives seed SEED's run with the step's flags EXTRA: seed<N>, the data's word
# (DTAG), the flags' words (its log is $RES/train-24ep-<date>-NAME.log, its run folder runs/NAME).
train_name() {
    local s="$1" tag=""; shift
    [ $# -gt 0 ] && tag="-$(printf '%s-' "$@" | sed -E 's/^-+//; s/[^A-Za-z0-9.]+/-/g; s/-+$//')"
    echo "seed$s$DTAG$tag"
}

# The OURS_FALLBACK flags run NAME had (the .flags file beside its log); status 1 when it has none:
# the run did not end as it should, or never ran.
ran_with() {
    cat "$RES/train-24ep-$day-$1.flags" 2> /dev/null
}

# OURS_FALLBACK with FLAG added, unless it holds it already (the model refuses a flag given twice).
add_fallback() {
    local a
    for a in "${OURS_FALLBACK[@]}"; do [ "$a" = "$1" ] && return 0; done
    OURS_FALLBACK+=("$1")
}

# train_run's status when the call's budget has no room left for a run (nothing was run).
NO_TIME=200
# The time limit of one `model train` run (less if the budget has less left).
train_timeout="${TRAIN_TIMEOUT:-500}"

# One `model train` run into run folder NAME, its output (under the GPU's name) to LOG, with the
# flags after them. Status: the model's (timeout's 124 if it ran into its time limit), or NO_TIME.
# RUN_LIMIT_CUT is 1 when the budget cut the run's limit below TRAIN_TIMEOUT, else empty.
RUN_LIMIT_CUT=""
train_run() {
    local name="$1" log="$2" t_s; shift 2
    t_s="$(limit "$train_timeout")"; [ -n "$t_s" ] || return "$NO_TIME"
    RUN_LIMIT_CUT=""; [ "$t_s" -lt "$train_timeout" ] && RUN_LIMIT_CUT=1
    { nvidia-smi -L | head -n 1; timeout -k 10 "$t_s" "$GPU_ROOT/devbin/model" train --out "$RES/runs" --name "$name" --no-progress "$@" 2>&1; } | tee "$log"
    return "${PIPESTATUS[0]}"
}

# Whether the recipe run logged in LOG, which ended with status RC, says that this build's fast GPU
# path (bf16, channels-last, our fused kernels, the CUDA graph) may be broken, so that `train` runs
# the seed again with --plain and a call still measures accuracy. That is: the run got as far as
# opening the GPU (its `Device:` line: not refused for its flags, its data or an existing run
# folder, which --plain would not mend), and then crashed, stopped (a NaN loss, say), ended below
# ACC_FLOOR% (default 80; every full 24-epoch run of the recipe so far ended at 90 to 92% on the
# staged copy) or without its `Done: test accuracy P%` line, or hung: ran into the whole of
# TRAIN_TIMEOUT (status 124, or 137 when killed; a recipe run's epochs took 10 s on the fast path
# and 32 s on the reference path, plus the LR range test and start-up), where a limit the
# budget cut short says nothing. Only recipe runs are judged: TRAIN_ARGS may hold --tta and --ema,
# which leave the training as it is (the accuracy judged is then the one the Done line gives), and
# with any other flag (--epochs, --lr-max, ...) a low accuracy may be what the run should end at;
# runs already on --plain have no path to fall back to.
fast_path_failed() {
    local log="$1" rc="$2" a acc
    for a in "${TRAIN_ARGS[@]}"; do
        [ "$a" = --tta ] || [ "$a" = --ema ] || return 1
    done
    for a in "${OURS_FALLBACK[@]}"; do [ "$a" = --plain ] && return 1; done
    grep -q '^Device: ' "$log" || return 1
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        [ -z "$RUN_LIMIT_CUT" ]
        return
    fi
    acc="$(sed -nE 's/^Done: test accuracy ([0-9]+(\.[0-9]+)?)%.*/\1/p' "$log" | tail -n 1)"
    [ "$rc" -ne 0 ] || [ -z "$acc" ] || awk -v a="$acc" -v f="${ACC_FLOOR:-80}" 'BEGIN { exit !(a + 0 < f + 0) }'
}

# The data in use re-encoded through JPEG at quality Q (bench/jpeg_degrade.py, the JPEG sensitivity
# check of issue 6) into $DATA-qQ (/root/cifar10-qQ for the staged copy), for `train SEEDS -- --data
# /root/cifar10-qQ`; needs Pillow in the machine's Python, and says so (status 1) if it is missing.
degrade() {
    local q="${1:-55}" t_s
    python3 -c 'import PIL' 2>/dev/null || { echo "on-gpu.sh: degrade needs Pillow (python3 -c 'import PIL' failed): skipped"; return 1; }
    t_s="$(limit 120)"; [ -n "$t_s" ] || return 1
    { echo "== bench/jpeg_degrade.py --data $DATA --quality $q"; timeout -k 10 "$t_s" python3 bench/jpeg_degrade.py --data "$DATA" --out "$DATA-q$q" --quality "$q" 2>&1; } | tee -a "$RES/jpeg-degrade-$day.txt"
}

# `official 21 22 23`: issue 6's deciding runs, whatever the machine holds.
# 1. bench/official_cifar.py tries the copies `stage` listed (cifar-search-<date>.txt) and prepares
#    the first that proves to be the official files (published MD5s where they exist, and the
#    training and test pixels' published mean and std) in /root/cifar10-official; its report goes to
#    official-<date>.txt. If one passes, every later step of the command reads it, and their
#    output names say "official".
# 2. `train SEEDS [-- ARGS]` on that data (the staged copy if none passed: still issue 6's seeds).
# 3. With the official files and Pillow: the first seed once more on them re-encoded at JPEG quality
#    75, as ../shared/cifar10 was made (its SOURCE.md), so that one pair of runs with the same seed
#    measures what the JPEG round costs; jpeg-degrade-<date>.txt gives its PSNR (about 30.5 dB if the
#    encoding matches SOURCE.md's). It runs with the flags the first seed's run had (a fallback to
#    --plain at a later seed does not reach it), and if its own fast path fails and it falls back,
#    the first seed runs once more on the official files with --plain, so that the pair still
#    differs in the data alone.
official() {
    local seeds=() rest=() seen="" a
    for a in "$@"; do
        if [ -n "$seen" ]; then rest+=("$a"); elif [ "$a" = "--" ]; then seen=1; else seeds+=("$a"); fi
    done
    for a in "${rest[@]}"; do
        [ "$a" = "--data" ] && { echo "on-gpu.sh: official chooses the data itself; --data in its flags would void the pair of runs: skipped" >&2; return 0; }
    done
    [ ${#rest[@]} -gt 0 ] && rest=(-- "${rest[@]}")
    local list="$RES/cifar-search-$day.txt" t_s
    # Checking a copy reads it whole (and decodes 60,000 PNGs for Hugging Face's): seconds, but a
    # large wrong candidate must not eat the call.
    t_s="$(limit 180)"; [ -n "$t_s" ] || return 0
    if [ -f "$list" ] && timeout -k 10 "$t_s" python3 bench/official_cifar.py --candidates "$list" --out "$GPU_ROOT/cifar10-official" 2>&1 | tee "$RES/official-$day.txt"; then
        DATA="$GPU_ROOT/cifar10-official"
        DTAG=-official
        echo "on-gpu.sh: the steps from here on read the official files in $DATA" | tee -a "$RES/official-$day.txt"
    else
        DATA="$GPU_ROOT/cifar10"
        DTAG=""
        echo "on-gpu.sh: no official CIFAR-10 copy passed; the steps from here on read the staged copy $DATA" | tee -a "$RES/official-$day.txt"
    fi
    pack
    [ ${#seeds[@]} -gt 0 ] || return 0
    train "${seeds[@]}" "${rest[@]}"
    [ -n "$DTAG" ] || return 0
    # The q75 run has the flags the first seed's run had (its .flags).
    local first
    if ! first="$(ran_with "$(train_name "${seeds[0]}" "${rest[@]:1}")")"; then
        echo "on-gpu.sh: seed ${seeds[0]}'s run on the official files did not end as it should (or had no time): no q75 run to pair with it"
        return 0
    fi
    degrade 75 || return 0
    # (The first seed's .flags hold every flag the script added to its run, pick's choice
    # included: the q75 run gets exactly those, and nothing chosen since.)
    local data="$DATA" dtag="$DTAG" later=("${OURS_FALLBACK[@]}") later_chosen=("${OURS_CHOSEN[@]}") q75_flags
    read -r -a OURS_FALLBACK <<< "$first"
    OURS_CHOSEN=()
    DATA="$data-q75" DTAG="$dtag-q75"
    train "${seeds[0]}" "${rest[@]}"
    q75_flags="$(ran_with "$(train_name "${seeds[0]}" "${rest[@]:1}")")"
    local q75_ran=$?
    DATA="$data" DTAG="$dtag"
    OURS_FALLBACK=("${later[@]}")
    OURS_CHOSEN=("${later_chosen[@]}")
    if [ "$q75_ran" -eq 0 ] && [ "$q75_flags" != "$first" ]; then
        # The fast path failed on the q75 run, which ran again with --plain: the first seed on the
        # official files once more with those flags (their words in its name), so that the pair
        # still differs in the data alone; and every later step on --plain too.
        local q75=()
        read -r -a q75 <<< "$q75_flags"
        echo "on-gpu.sh: the q75 run fell back to ${q75[*]}: seed ${seeds[0]} runs once more on the official files with them" | tee -a "$RES/fallback-$day.txt"
        OURS_FALLBACK=()
        OURS_CHOSEN=()
        train "${seeds[0]}" -- "${q75[@]}"
        OURS_FALLBACK=("${later[@]}")
        OURS_CHOSEN=("${later_chosen[@]}")
        add_fallback --plain
    fi
}

# Each call appends to the day's file, under a line naming its flags.
profile() {
    local t_s; t_s="$(limit 120)"; [ -n "$t_s" ] || return 0
    { header; echo "== model profile $*"; timeout -k 10 "$t_s" "$GPU_ROOT/devbin/model" profile --data "$DATA" "$@" 2>&1; } | tee -a "$RES/profile-$day.txt"
}

# `pick`: how the convolutions run for the rest of the call, by measurement. Of this day's
# `profile` steps (profile-<date>.txt, this call's and earlier ones' on this machine) whose flags
# are only convolution choices (none: the binary's default; --first-conv=X, --cudnn-graph,
# --cudnn-search=timed, in any combination), the last captured-step time of each set of flags
# ("N captured steps (CUDA graph) queued back to back: X ms per step", not one where some steps
# ran eagerly); the fastest wins, unless the default (the profile with no flag) is within 1% of
# it or has no profile (a change must be measured to help). A winner needs this
# day's GPU tests of what it changes to have passed: with --first-conv,
# first_conv_direct_kernels_match_the_cpu_and_cudnn (our kernels and cuDNN's graph API against
# the CPU); with --cudnn-graph, graph_api_convolutions_match_the_cpu. Its flags go to every later
# `train` and `sbs` (OURS_CHOSEN; a step that names any of these flags itself keeps its own);
# the table and the choice go to pick-<date>.txt.
pick() {
    local f="$RES/profile-$day.txt" out="$RES/pick-$day.txt" table best best_ms default_ms untested=""
    if [ ! -f "$f" ]; then
        echo "on-gpu.sh: pick: no profile-$day.txt, nothing to choose from: the default stays" | tee -a "$out"
        return 0
    fi
    table="$(awk '
        # The flags of a profile step as a choice: each flag in its --name=value spelling, in a
        # fixed order; "" if any flag is not a convolution choice. (A flag naming the default,
        # such as --first-conv=direct, is a choice of its own: the default is no flag.)
        function choice(flags,    t, n, i, out, fc, graph, search) {
            gsub(/--first-conv +/, "--first-conv=", flags); gsub(/--cudnn-search +/, "--cudnn-search=", flags)
            n = split(flags, t, / +/); fc = ""; graph = ""; search = ""
            for (i = 1; i <= n; i++) {
                if (t[i] == "") continue
                else if (t[i] ~ /^--first-conv=[a-z-]+$/) fc = t[i]
                else if (t[i] == "--cudnn-graph") graph = t[i]
                else if (t[i] == "--cudnn-search=timed") search = t[i]
                else return ""
            }
            out = fc; if (graph != "") out = out (out == "" ? "" : " ") graph; if (search != "") out = out (out == "" ? "" : " ") search
            return out == "" ? "default" : out
        }
        /^== model profile/ { flags = $0; sub(/^== model profile */, "", flags); next }
        /captured steps \(CUDA graph\) queued back to back: [0-9.]+ ms per step/ && !/ran eagerly/ {
            ms = $0; sub(/.*queued back to back: /, "", ms); sub(/ ms per step.*/, "", ms)
            c = choice(flags)
            if (c != "") { if (!(c in last)) order[++n] = c; last[c] = ms }
        }
        END { for (i = 1; i <= n; i++) print order[i] "\t" last[order[i]] }' "$f")"
    {
        echo "== pick: the captured step of each convolution choice in profile-$day.txt (ms, the last profile of each)"
        printf '%s\n' "$table"
    } >> "$out"
    if [ -z "$table" ]; then
        echo "on-gpu.sh: pick: no profile step with a captured step and only convolution choices for flags: the default stays" | tee -a "$out"
        return 0
    fi
    IFS=$'\t' read -r best best_ms < <(printf '%s\n' "$table" | LC_ALL=C sort -s -t$'\t' -k2,2g | head -n 1)
    default_ms="$(printf '%s\n' "$table" | awk -F'\t' '$1 == "default" { print $2 }')"
    [[ " $best " == *" --first-conv="* ]] && ! test_passed "$RES/cuda-tests-$day.txt" first_conv_direct_kernels_match_the_cpu_and_cudnn \
        && untested=first_conv_direct_kernels_match_the_cpu_and_cudnn
    [[ " $best " == *" --cudnn-graph "* ]] && ! test_passed "$RES/cuda-tests-$day.txt" graph_api_convolutions_match_the_cpu \
        && untested="${untested:+$untested and }graph_api_convolutions_match_the_cpu"
    if [ "$best" = default ]; then
        echo "on-gpu.sh: pick: the default is the fastest ($best_ms ms): the default stays" | tee -a "$out"
    elif [ -z "$default_ms" ]; then
        echo "on-gpu.sh: pick: $best is the fastest profiled ($best_ms ms), but the default has no profile to compare with today: the default stays" | tee -a "$out"
    elif awk -v b="$best_ms" -v d="$default_ms" 'BEGIN { exit !(b * 1.01 >= d + 0) }'; then
        echo "on-gpu.sh: pick: $best ($best_ms ms) is within 1% of the default ($default_ms ms): the default stays" | tee -a "$out"
    elif [ -n "$untested" ]; then
        echo "on-gpu.sh: pick: $best is the fastest ($best_ms ms, the default $default_ms), but $untested has not passed today (cuda-tests-$day.txt): the default stays" | tee -a "$out"
    else
        read -r -a OURS_CHOSEN <<< "$best"
        echo "on-gpu.sh: pick: $best ($best_ms ms, the default $default_ms): every later train and sbs of this call runs with it" | tee -a "$out"
    fi
}

# Whether the words given name a flag `pick` chooses (a step with its own keeps them).
names_a_pick_flag() {
    [[ " $* " =~ \ --(first-conv|cudnn-graph|cudnn-search) ]]
}

# PyTorch's breakdown of the same step (bf16 autocast + channels-last eager unless FLAGS say otherwise),
# appended to the day's file under a line naming its flags.
torchprof() {
    local t_s; t_s="$(limit 150)"; [ -n "$t_s" ] || return 0
    { header; echo "== bench/torch_step_profile.py $*"; timeout -k 10 "$t_s" python3 bench/torch_step_profile.py "$@" 2>&1; } | tee -a "$RES/torch-profile-$day.txt"
}

# The LR range test alone (prints both rules' suggestions; the curve goes to the run folder).
lrfind() {
    local t_s; t_s="$(limit 120)"; [ -n "$t_s" ] || return 0
    { header; echo "== model lr-find $*"; timeout -k 10 "$t_s" "$GPU_ROOT/devbin/model" lr-find --data "$DATA" --out "$RES/runs" --no-progress "$@" 2>&1; } | tee -a "$RES/lr-find-$day.txt"
}

# One GPU test binary under compute-sanitizer (memcheck: out-of-bounds and misaligned accesses,
# or another tool with TOOL=racecheck|synccheck|initcheck), e.g. `sanitize cuda_ops batch_norm_relu`.
sanitize() {
    local bin="$1"; shift
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || find / -name compute-sanitizer -type f 2>/dev/null | head -n 1)"
    local t_s; t_s="$(limit 500)"; [ -n "$t_s" ] || return 0
    { header; echo "== compute-sanitizer --tool ${TOOL:-memcheck} test-$bin --ignored $*";
      timeout -k 10 "$t_s" "$sanitizer" --tool "${TOOL:-memcheck}" "$GPU_ROOT/devbin/test-$bin" --ignored --test-threads=1 "$@" 2>&1; } | tee -a "$RES/sanitize-$day.txt"
}

# Our binary and PyTorch side by side (bench/side_by_side.py), e.g.
#   sbs 0 -- --ours-args="--tta"                               ours + PyTorch variants, seed 0
#   sbs 1 2 -- --variants --ours-args="--tta"                  ours alone, seeds 1 and 2
# The table, JSON and logs are rewritten after every run, in $RES/sbs for a command's first
# `sbs` step and $RES/sbs-2, $RES/sbs-3, ... for the next ones (their files have the same
# names, so a second step must not overwrite the first's); the run folders go to $RES/sbs-runs.
sbs() {
    local seeds=() extra=() seen="" a
    for a in "$@"; do
        if [ -n "$seen" ]; then extra+=("$a"); elif [ "$a" = "--" ]; then seen=1; else seeds+=("$a"); fi
    done
    local t_s; t_s="$(limit 590)"; [ -n "$t_s" ] || return 0
    local ours=("${OURS_CHOSEN[@]}")
    # (Our flags in an sbs step's own arguments come as --ours-args=FLAGS: any mention counts.)
    [[ " ${extra[*]} " =~ --(first-conv|cudnn-graph|cudnn-search) ]] && ours=()
    ours+=("${OURS_FALLBACK[@]}")
    [ ${#ours[@]} -gt 0 ] && extra=("--ours-args=${ours[*]}" "${extra[@]}")
    local out="$RES/sbs$DTAG" k=2
    while [ -e "$out" ]; do out="$RES/sbs$DTAG-$k"; k=$((k + 1)); done
    # --timeout-s: no single run (ours, a PyTorch variant, a compile) may take more than 300 s.
    timeout -k 10 "$t_s" python3 bench/side_by_side.py --data "$DATA" --bin "$GPU_ROOT/devbin/model" --timeout-s 300 \
        --seeds "${seeds[@]:-0}" --out "$out" --runs-dir "$RES/sbs-runs" --date "$day" "${extra[@]}" 2>&1 \
        | tee -a "$RES/sbs-$day.txt"
}

# One step: check the staging (all but `stage`), run it, pack the results.
step() {
    [ "$1" = stage ] || need_staged
    "$@"
    pack
}

# The page scripts/gpu/summarize.py makes of everything in the results so far (the GPU tests, each
# run's accuracy and times, issue 6's and 7's bars): into summary-<date>.md in the archive, and
# printed last, where the run tool's output tail shows it. A failure of its own costs nothing else.
summary() {
    python3 scripts/gpu/summarize.py "$RES" > "$RES/summary-$day.md" 2>&1 \
        || echo "on-gpu.sh: scripts/gpu/summarize.py failed (its output is in summary-$day.md)"
    echo "== summary-$day.md"
    cat "$RES/summary-$day.md"
    pack
}

mode=""
args=()
ran_more=""
for a in "$@"; do
    case "$a" in
        stage|tests|train|profile|pick|torchprof|degrade|official|lrfind|sanitize|sbs)
            [ -n "$mode" ] && step "$mode" "${args[@]}"
            [ "$a" = stage ] || ran_more=1
            mode="$a"; args=() ;;
        *) args+=("$a") ;;
    esac
done
# (An `if`, not `&&`: with no mode, as when a test sources this file for its functions, the
# script ends with status 0.)
if [ -n "$mode" ]; then step "$mode" "${args[@]}"; fi
# (Not after a call that only stages: nothing to read yet.)
if [ -n "$ran_more" ]; then summary; fi
