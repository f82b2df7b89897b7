"""Our engine and PyTorch on the same recipe, on the same GPU, in one session (issues 6 and 7).

One command on a GPU machine:

    python3 bench/side_by_side.py --data DIR --bin target/release/model [--epochs 24] [--seeds 0 1 2] \\
        [--lr-max X --lr-min Y] [--out bench/results]

For each seed it runs, one after the other (never two at once):
1. our binary: `<bin> train --device cuda --data DIR --epochs E --seed S --lr-max X --lr-min Y
   --out RUNS --name NAME --no-progress`;
2. the cross-evaluation: bench/train_torch.py --eval-checkpoint on the checkpoint that run wrote
   (PyTorch, fp32, strict=True), next to the accuracy our run printed;
3. the PyTorch variants of bench/train_torch.py, with the recipe settings our run recorded in its
   `optimizer.safetensors` metadata (LR, peak epoch, momentum, Nesterov, weight decay, label smoothing,
   width, logit scale, batch size): fp32 eager; bf16 autocast + channels-last eager; the same with
   torch.compile.
Without --lr-max/--lr-min, our `lr-find` command runs once first (seed of the first run) and its
suggestion is used by every run, ours and PyTorch's alike. If it fails, bench/lr_range_torch.py (the same
test in PyTorch) picks the LRs by the same rules, and the PyTorch runs go on (the table says which).

What is measured, per run:
- per-epoch training time: ours from `runs/<name>/metrics.csv` (`seconds`: host clock around the
  epoch's training loop, model/src/train.rs); PyTorch's from train_torch.py (device synchronised);
- per-epoch train + test-evaluation time: ours from metrics.csv (`seconds + eval_seconds`; binaries
  older than the eval_seconds column: the time at which "EPOCH: k" and "Test set: ..." arrive here);
  PyTorch's from train_torch.py (training + evaluation timers);
- totals with and without the first epoch (it holds cuDNN autotuning, kernel loading and, for
  torch.compile, the compilation);
- test accuracy after every epoch, and the final one;
- peak GPU memory: PyTorch's allocator peak (torch.cuda.max_memory_allocated); ours if our log prints a
  line "GPU memory: peak <N> MiB in tensors, peak <M> MiB held from the driver" (model/src/run.rs; else
  null), beside PyTorch's max_memory_reserved; and, for every run, the peak of the
  GPU's used memory (nvidia-smi, sampled every 100 ms) minus its value before the run: the whole
  process's footprint (CUDA context, cuDNN/cuBLAS workspaces, allocator caches), comparable across
  engines, but a peak shorter than the sampling interval can be missed;
- the process wall time (start to exit: data loading, initialisation, everything); for ours, also its
  log's `Start-up:` and `After training:` lines (model/src/startup.rs), which break down the part
  before the first epoch, after the last and between epochs (`ours_startup_s`, `ours_after_training_s`,
  `ours_between_epochs_s` in the speed JSON).

Outputs under --out (default bench/results), DATE = today (or --date):
- side-by-side-DATE.md and side-by-side-DATE.json: the table, per-epoch figures, cross-evaluation;
- speed-DATE.json: the issue-7 keys: device, ours_s, torch_eager_amp_s, torch_compile_s (totals of the
  E epochs, training + test evaluation, first epoch included, mean over seeds), ours_acc, torch_acc
  (mean final test accuracy, %; torch_acc is the eager bf16 variant), their ratios and achieved TFLOP/s;
- train-<E>ep-DATE-seed<S>.log: our whole log of each run (first line: the GPU's name), as issue 6 asks;
- in the markdown: our `profile` output (time per operation of one step from CUDA events, step times), run
  once before the seeds with the same flags (--ours-args included), as issue 7 asks;
- side-by-side-DATE/: the PyTorch logs, the LR range test's log, the raw results of every run.

`--from-json FILE [FILE ...]` writes the markdown table and speed JSON again from saved JSON files (no
training), merging them: a GPU call of at most 10 minutes can run one seed at a time with --out in a fresh
folder, then the per-seed JSON files are merged here. Give --lr-max/--lr-min then, so that every call uses
the same LR. `--device cpu` with `--subset N --width W` runs the whole pipeline on the CPU as a smoke test
(no GPU-memory figures then).
"""
import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_TORCH = os.path.join(HERE, "train_torch.py")
LR_RANGE_TORCH = os.path.join(HERE, "lr_range_torch.py")
sys.path.insert(0, HERE)
import step_model  # noqa: E402

# PyTorch variants: key -> (label, extra train_torch.py flags).
# In the order they run: issue 7's two first, so a command cut short keeps them.
VARIANTS = {
    "torch_eager_amp": ("PyTorch eager bf16 autocast, channels-last", ["--amp", "--channels-last"]),
    "torch_compile": ("PyTorch torch.compile, bf16 autocast, channels-last", ["--amp", "--channels-last", "--compile"]),
    "torch_fp32": ("PyTorch eager fp32", []),
}
OURS = "ours"
LABELS = {OURS: "ours (this engine)", **{k: v[0] for k, v in VARIANTS.items()}}

ISSUE7_FLOOR_PFLOP = 2.7     # issue 7: ~0.76 GFLOP forward per image x 3 x 50,000 images x 24 epochs
ISSUE7_REFERENCE_TFLOPS = 800.0  # issue 7: the bf16 rate measured on an H100


# ----------------------------------------------------------------------------------------------------
# Helpers: processes, GPU memory sampling, parsing our outputs
# ----------------------------------------------------------------------------------------------------

class GpuMemorySampler:
    """Samples the GPU's used memory (MiB, nvidia-smi) every 100 ms while a run goes on. The runs are
    sequential, so the peak minus the value before the run is that run's whole-process footprint."""

    def __init__(self, enabled, gpu_index=0):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.gpu = str(gpu_index)
        self.proc, self.thread, self.peak, self.base = None, None, None, None

    def _query_once(self):
        out = subprocess.run(["nvidia-smi", "-i", self.gpu, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True)
        try:
            return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None
        except (ValueError, IndexError):
            return None

    def __enter__(self):
        if not self.enabled:
            return self
        self.base = self._query_once()
        if self.base is None:
            self.enabled = False
            return self
        self.peak = self.base
        self.proc = subprocess.Popen(["nvidia-smi", "-i", self.gpu, "--query-gpu=memory.used",
                                      "--format=csv,noheader,nounits", "-lms", "100"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        def read():
            for line in self.proc.stdout:
                try:
                    v = float(line.strip())
                except ValueError:
                    continue
                self.peak = v if self.peak is None else max(self.peak, v)
        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.thread.join(timeout=2)

    def delta_bytes(self):
        """Peak used memory during the run minus the value before it, in bytes (None when not sampled)."""
        if not self.enabled or self.peak is None or self.base is None:
            return None
        return int((self.peak - self.base) * 2**20)


def run_streamed(cmd, log_path, timeout_s=None, env=None):
    """Run `cmd`, echo and save its output (stdout and stderr merged), and note when each line arrived.
    Returns (exit code, [(seconds since start, line)], wall seconds)."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    lines = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=env)
        timer = None
        if timeout_s:
            timer = threading.Timer(timeout_s, proc.kill)
            timer.start()
        for line in proc.stdout:
            t = time.perf_counter() - t0
            line = line.rstrip("\n")
            lines.append((t, line))
            log.write(line + "\n")
            log.flush()
            print("    " + line, flush=True)
        rc = proc.wait()
        if timer:
            timer.cancel()
    return rc, lines, time.perf_counter() - t0


def last_json(lines):
    """The last output line that parses as a JSON object (train_torch.py prints its results so)."""
    for _, line in reversed(lines):
        s = line.strip()
        if s.startswith("{"):
            try:
                return json.loads(s)
            except json.JSONDecodeError:
                continue
    return None


def safetensors_metadata(path):
    """The `__metadata__` map of a safetensors file (8-byte little-endian header length, then JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header.get("__metadata__", {}) or {}


def read_metrics_csv(path):
    """Our metrics.csv (model/src/run.rs): epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds[,eval_seconds
    [,test_acc_tta]]; an empty cell (test_acc_tta without --tta) is None."""
    rows = []
    with open(path) as f:
        header = f.readline().strip().split(",")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, (float(v) if v.strip() else None for v in line.strip().split(",")))))
    return rows


EPOCH_RE = re.compile(r"^EPOCH: (\d+)\b")
TEST_RE = re.compile(r"Test set: Average loss: ([-0-9.eE+naif]+), Accuracy: (\d+)/(\d+)")
# With --tta, after each "Test set:" line (model/src/run.rs).
TTA_RE = re.compile(r"Test set with flip TTA: Average loss: ([-0-9.eE+naif]+), Accuracy: (\d+)/(\d+)")
_NUM_UNIT = r"([0-9]+(?:\.[0-9]+)?)\s*(GiB|MiB|KiB|GB|MB|KB|bytes|B)\b"
# Our log's memory line (model/src/run.rs), e.g. "GPU memory: peak 812 MiB in tensors, peak 1024 MiB held from
# the driver (pool, dataset, workspace)"; a plain "Peak GPU memory: 812 MiB" is read as the tensors' peak.
TENSORS_RE = re.compile(r"GPU memory: peak " + _NUM_UNIT + r" in tensors")
HELD_RE = re.compile(r"GPU memory:.*peak " + _NUM_UNIT + r" held")
PEAK_RE = re.compile(r"[Pp]eak (?:GPU |device )?memory\D*?" + _NUM_UNIT)
LR_SUGGEST_RE = re.compile(r"LRMAX=([0-9.eE+-]+) LRMIN=([0-9.eE+-]+)")
# Our log's breakdown of the process's time outside its epochs (model/src/startup.rs), e.g.
# "Start-up: device 0.41s (...), data 0.02s, ...; 1.85s since the program started" and
# "After training: plots 0.30s, ...; 0.41s after the last epoch; ...".
STARTUP_RE = re.compile(r"^Start-up: .*; ([0-9.]+)s since the program started")
AFTER_RE = re.compile(r"^After training: .*; ([0-9.]+)s after the last epoch")
BETWEEN_RE = re.compile(r"the epochs spent ([0-9.]+)s outside their training and evaluation")
UNITS = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def last_amount(regex, text):
    """Bytes given by the last match of `regex` (groups: number, unit) in `text`, or None."""
    m = None
    for m in regex.finditer(text):
        pass
    return int(float(m.group(1)) * UNITS[m.group(2)]) if m else None


def epoch_spans(lines):
    """Per epoch, seconds from our "EPOCH: k" line to the next "Test set:" line (training + evaluation)."""
    spans, start = {}, None
    for t, line in lines:
        m = EPOCH_RE.match(line)
        if m:
            start = (int(m.group(1)), t)
        elif start and TEST_RE.search(line):
            spans[start[0]] = t - start[1]
            start = None
    return [spans[k] for k in sorted(spans)]


def forward_flops(width=1.0):
    """FLOPs of one image's forward pass (2 per multiply-add of the convolutions and the linear layer;
    BN, ReLU, pooling are left out): 0.7585 GFLOP for width 1, the 0.76 of issue 7. From the layer
    list of bench/step_model.py."""
    return sum(flops for _, _, flops, _ in step_model.layers(width, batch=1))


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(r):
    """Adds the totals of one run's per-epoch lists (in place) and returns it."""
    tr, te = r.get("epoch_train_s") or [], r.get("epoch_train_eval_s") or []
    r["train_total_s"] = sum(tr) if tr else None
    r["train_total_s_excl_first"] = sum(tr[1:]) if len(tr) > 1 else None
    r["train_eval_total_s"] = sum(te) if te else None
    r["train_eval_total_s_excl_first"] = sum(te[1:]) if len(te) > 1 else None
    accs = r.get("test_acc_per_epoch") or []
    r["final_acc"] = accs[-1] if accs else None
    tta = [a for a in r.get("test_acc_tta_per_epoch") or [] if a is not None]
    r["final_acc_tta"] = tta[-1] if tta else None
    return r


# ----------------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------------

def gpu_name(args):
    """The GPU's name, from nvidia-smi -L and from PyTorch (in a child process, so this one holds no
    CUDA context during the runs). Prints both."""
    names = {}
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        print("nvidia-smi -L:\n" + (out.stdout.strip() or out.stderr.strip()), flush=True)
        if out.returncode == 0 and out.stdout.strip():
            names["nvidia_smi"] = out.stdout.strip().splitlines()[0]
    if args.device != "cpu":
        out = subprocess.run([args.python, "-c", "import torch; print(torch.cuda.get_device_name(0)); "
                              "print(torch.__version__)"], capture_output=True, text=True)
        if out.returncode == 0:
            name, version = out.stdout.strip().splitlines()[:2]
            names["torch"], names["torch_version"] = name, version
            print(f"torch.cuda.get_device_name(0): {name} (torch {version})", flush=True)
        else:
            print("PyTorch sees no GPU:\n" + out.stderr.strip()[-2000:], flush=True)
    device = names.get("torch") or names.get("nvidia_smi") or ("cpu" if args.device == "cpu" else "unknown GPU")
    return device, names


def common_ours_flags(args):
    f = ["--device", args.device, "--data", args.data, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
         "--width", str(args.width), "--out", args.runs_dir, "--no-progress"]
    if args.subset:
        f += ["--subset", str(args.subset)]
    return f


def run_lr_find(args, stamp, work):
    """Our LR range test, once; returns (lr_max, lr_min, source) from its printed suggestion. If ours fails
    (on a GPU it may, before its first GPU run has passed), the same test in PyTorch picks them instead, so
    that the PyTorch runs still happen and show what the recipe reaches on this machine and data."""
    name = f"sbs-{stamp}-lrfind"
    cmd = [args.bin, "lr-find"] + common_ours_flags(args) + ["--seed", str(args.seeds[0]), "--name", name] + args.ours_args
    rc, lines, _ = run_streamed(cmd, os.path.join(work, "lr-find.log"), args.timeout_s)
    for _, line in reversed(lines):
        m = LR_SUGGEST_RE.search(line)
        if m:
            return float(m.group(1)), float(m.group(2)), "our lr-find's suggestion, used by every run"
    print(f"our lr-find (exit {rc}) printed no 'LRMAX=.. LRMIN=..' suggestion: the LR range test of "
          f"bench/lr_range_torch.py picks the LRs instead", flush=True)
    return run_lr_find_torch(args, work, rc)


def flag_value(flags, name, default):
    """The value of `--name V` or `--name=V` in a flag list, else `default`."""
    for i, f in enumerate(flags):
        if f == name and i + 1 < len(flags):
            return flags[i + 1]
        if f.startswith(name + "="):
            return f.split("=", 1)[1]
    return default


def run_lr_find_torch(args, work, our_rc):
    """bench/lr_range_torch.py with our run's settings (width, batch, logit scale, seed) and rules (our CLI's
    defaults unless --ours-args names others)."""
    lr_rule = flag_value(args.ours_args, "--lr-rule", "minimum")
    lr_min_rule = flag_value(args.ours_args, "--lr-min-rule", "onset")
    cmd = [args.python, LR_RANGE_TORCH, "--device", args.device, "--data", args.data, "--width", str(args.width),
           "--batch-size", str(args.batch_size), "--seed", str(args.seeds[0]),
           "--out-scale", flag_value(args.ours_args, "--out-scale", "0.125"),
           "--lr-rule", lr_rule, "--lr-min-rule", lr_min_rule]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rc, lines, _ = run_streamed(cmd, os.path.join(work, "lr-find-torch.log"), args.timeout_s, env)
    for _, line in reversed(lines):
        m = LR_SUGGEST_RE.search(line)
        if m:
            return float(m.group(1)), float(m.group(2)), (
                f"PyTorch's LR range test (bench/lr_range_torch.py, rules {lr_rule} and {lr_min_rule}), "
                f"because our lr-find failed (exit {our_rc})")
    sys.exit(f"error: our lr-find (exit {our_rc}) and bench/lr_range_torch.py (exit {rc}) suggested no LR; "
             "pass --lr-max and --lr-min instead")


def run_ours(args, seed, stamp, work, device):
    """One training run of our binary; returns its record (per-epoch lists, settings, memory, log)."""
    name = f"sbs-{stamp}-seed{seed}"
    run_dir = os.path.join(args.runs_dir, name)
    cmd = [args.bin, "train"] + common_ours_flags(args) + [
        "--seed", str(seed), "--lr-max", repr(args.lr_max), "--lr-min", repr(args.lr_min), "--name", name] + args.ours_args
    raw_log = os.path.join(work, f"ours-seed{seed}.stdout.log")
    with GpuMemorySampler(args.device != "cpu" and not args.no_smi) as mem:
        rc, lines, wall = run_streamed(cmd, raw_log, args.timeout_s)
    r = {"variant": OURS, "seed": seed, "command": " ".join(shlex.quote(c) for c in cmd), "exit_code": rc,
         "run_dir": run_dir, "process_wall_s": wall, "smi_peak_delta_bytes": mem.delta_bytes()}
    log_path = os.path.join(run_dir, "train.log")
    log_text = open(log_path).read() if os.path.exists(log_path) else "\n".join(l for _, l in lines) + "\n"
    r["device_line"] = next((l for l in log_text.splitlines() if l.startswith("Device:")), None)
    r["peak_mem_allocated_bytes"] = last_amount(TENSORS_RE, log_text) or last_amount(PEAK_RE, log_text)
    r["peak_mem_held_bytes"] = last_amount(HELD_RE, log_text)
    r["peak_mem_source"] = "our log ('GPU memory: peak ...')" if r["peak_mem_allocated_bytes"] else \
        "not printed by our binary"
    tests = [TEST_RE.search(l) for l in log_text.splitlines()]
    tests = [t for t in tests if t]
    if tests:
        r["final_test_correct"], r["final_test_total"] = int(tests[-1].group(2)), int(tests[-1].group(3))
    ttas = [m for m in (TTA_RE.search(l) for l in log_text.splitlines()) if m]
    if ttas:
        r["final_test_tta_correct"] = int(ttas[-1].group(2))
    # Where the process's time outside the epochs went (binaries since 2026-11-27).
    for key, pattern in (("startup", STARTUP_RE), ("after_training", AFTER_RE), ("between_epochs", BETWEEN_RE)):
        found = [(l, m) for l, m in ((l, pattern.search(l)) for l in log_text.splitlines()) if m]
        if found:
            r[f"{key}_line"], r[f"{key}_s"] = found[-1][0], float(found[-1][1].group(1))
    metrics = os.path.join(run_dir, "metrics.csv")
    rows = read_metrics_csv(metrics) if os.path.exists(metrics) else []
    r["epoch_train_s"] = [row["seconds"] for row in rows]
    r["test_acc_per_epoch"] = [row["test_acc"] for row in rows]
    r["test_acc_tta_per_epoch"] = [row.get("test_acc_tta") for row in rows]
    r["test_loss_per_epoch"] = [row["test_loss"] for row in rows]
    r["train_acc_per_epoch"] = [row["train_acc"] for row in rows]
    r["train_loss_per_epoch"] = [row["train_loss"] for row in rows]
    # metrics.csv has eval_seconds since 2026-11-25 (host clock after the GPU finished, like
    # `seconds`); older binaries: the arrival times of our log lines.
    if rows and "eval_seconds" in rows[0]:
        r["epoch_train_eval_s"] = [row["seconds"] + row["eval_seconds"] for row in rows]
        r["epoch_train_eval_source"] = "metrics.csv seconds + eval_seconds"
    else:
        r["epoch_train_eval_s"] = epoch_spans(lines)
        r["epoch_train_eval_source"] = "log line arrival times"
    opt = os.path.join(run_dir, "optimizer.safetensors")
    r["settings"] = safetensors_metadata(opt) if os.path.exists(opt) else {}
    r["checkpoint"] = os.path.join(run_dir, "model.safetensors")
    if rc != 0:
        r["error"] = "\n".join(l for _, l in lines[-15:])
    # Issue 6's log file: first line the GPU's name, then our whole log, then metrics.csv.
    out_log = os.path.join(args.out, f"train-{args.epochs}ep-{args.date}-seed{seed}.log")
    with open(out_log, "w") as f:
        f.write(f"{device}\n")
        f.write(f"# command: {r['command']}\n# date: {args.date}; exit code {rc}; process wall time {wall:.1f}s\n")
        f.write(log_text)
        if os.path.exists(metrics):
            f.write("# metrics.csv\n" + open(metrics).read())
    r["log"] = out_log
    return summarize(r)


def run_profile(args, work):
    """Our `profile` command (the time of every operation of one training step, from CUDA events, and
    step times eager and, with the CUDA graph on (the default on a GPU; not with --plain), replayed) with this run's flags; its output."""
    cmd = [args.bin, "profile", "--device", args.device, "--data", args.data, "--batch-size", str(args.batch_size),
           "--width", str(args.width)] + args.ours_args
    rc, lines, _ = run_streamed(cmd, os.path.join(work, "profile.log"), args.timeout_s)
    text = "\n".join(line for _, line in lines)
    return {"command": " ".join(shlex.quote(a) for a in cmd), "exit_code": rc, "output": text}


def torch_settings(args, ours):
    """train_torch.py flags for the recipe: our run's recorded settings when there are any, else ours' CLI
    defaults as given to this script."""
    s = ours.get("settings") or {}
    flags = ["--epochs", str(args.epochs), "--batch-size", s.get("batch_size", str(args.batch_size)),
             "--lr-max", s.get("lr_max", repr(args.lr_max)), "--lr-min", s.get("lr_min", repr(args.lr_min)),
             "--width", s.get("width", str(args.width))]
    for key, flag in (("peak_epoch", "--peak-epoch"), ("momentum", "--momentum"), ("weight_decay", "--weight-decay"),
                      ("label_smoothing", "--label-smoothing"), ("out_scale", "--out-scale")):
        if key in s:
            flags += [flag, s[key]]
    if s.get("nesterov") == "false":
        flags.append("--no-nesterov")
    if s.get("cutout_inside") == "true":
        flags.append("--cutout-inside")
    # Flip TTA: as our run recorded it, or (no run of ours in this call) as given to ours.
    if s.get("tta") == "true" or (not s and "--tta" in args.ours_args):
        flags.append("--tta")
    # The moving average of the weights: a recipe setting, stored in our run's checkpoint.
    if s.get("ema") == "true" or (not s and "--ema" in args.ours_args):
        flags.append("--ema")
    if args.subset:
        flags += ["--subset", str(args.subset)]
    return flags


def run_torch(args, seed, key, recipe_flags, work):
    cmd = [args.python, TRAIN_TORCH, "--device", args.device, "--data", args.data, "--seed", str(seed)] + \
        recipe_flags + VARIANTS[key][1] + args.torch_args
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with GpuMemorySampler(args.device != "cpu" and not args.no_smi) as mem:
        rc, lines, wall = run_streamed(cmd, os.path.join(work, f"{key}-seed{seed}.log"), args.timeout_s, env)
    res = last_json(lines) or {}
    r = {"variant": key, "seed": seed, "command": " ".join(shlex.quote(c) for c in cmd), "exit_code": rc,
         "process_wall_s": wall, "smi_peak_delta_bytes": mem.delta_bytes(),
         "peak_mem_allocated_bytes": res.get("peak_mem_allocated_bytes"),
         "peak_mem_held_bytes": res.get("peak_mem_reserved_bytes"),
         "peak_mem_source": "torch.cuda.max_memory_allocated" if res.get("peak_mem_allocated_bytes") else None,
         "epoch_train_s": res.get("epoch_train_s", []),
         "epoch_train_eval_s": [a + b for a, b in zip(res.get("epoch_train_s", []), res.get("epoch_eval_s", []))],
         "test_acc_per_epoch": res.get("test_acc_per_epoch", []),
         "test_acc_tta_per_epoch": res.get("test_acc_tta_per_epoch", []), "torch_result": res}
    if rc != 0 or not res:
        r["error"] = "\n".join(l for _, l in lines[-15:])
    return summarize(r)


def cross_eval(args, ours, work):
    """PyTorch's fp32 evaluation of our final checkpoint, beside the accuracy our run printed."""
    ck = ours.get("checkpoint")
    if not ck or not os.path.exists(ck):
        return {"seed": ours["seed"], "error": "our run wrote no checkpoint"}
    cmd = [args.python, TRAIN_TORCH, "--device", args.device, "--data", args.data, "--eval-checkpoint", ck]
    rc, lines, _ = run_streamed(cmd, os.path.join(work, f"cross-eval-seed{ours['seed']}.log"), args.timeout_s)
    res = last_json(lines) or {}
    e = {"seed": ours["seed"], "checkpoint": ck, "command": " ".join(shlex.quote(c) for c in cmd),
         "ours_correct": ours.get("final_test_correct"), "ours_acc": ours.get("final_acc"),
         "torch_correct": res.get("test_correct"), "torch_acc": res.get("test_acc"), "torch_result": res,
         "ours_tta_correct": ours.get("final_test_tta_correct"), "torch_tta_correct": res.get("test_tta_correct")}
    if e["ours_correct"] is not None and e["torch_correct"] is not None:
        e["diff_images"] = e["torch_correct"] - e["ours_correct"]
    if e["ours_tta_correct"] is not None and e["torch_tta_correct"] is not None:
        e["tta_diff_images"] = e["torch_tta_correct"] - e["ours_tta_correct"]
    if rc != 0 or not res:
        e["error"] = "\n".join(l for _, l in lines[-15:])
    return e


# ----------------------------------------------------------------------------------------------------
# Aggregation and outputs
# ----------------------------------------------------------------------------------------------------

def aggregate(runs):
    """Per variant: mean over the seeds that finished of every total, per-epoch means, peaks."""
    agg = {}
    for key in [OURS] + list(VARIANTS):
        rs = [r for r in runs if r["variant"] == key]
        ok = [r for r in rs if not r.get("error") and r.get("test_acc_per_epoch")]
        if not rs:
            continue
        a = {"label": LABELS[key], "seeds": [r["seed"] for r in rs], "seeds_ok": [r["seed"] for r in ok],
             "final_acc_per_seed": [r.get("final_acc") for r in ok],
             "final_acc_tta_per_seed": [r.get("final_acc_tta") for r in ok if r.get("final_acc_tta") is not None]}
        for k in ("final_acc", "final_acc_tta", "train_total_s", "train_total_s_excl_first", "train_eval_total_s",
                  "train_eval_total_s_excl_first", "process_wall_s", "startup_s", "after_training_s",
                  "between_epochs_s"):
            a[k] = mean([r.get(k) for r in ok])
        a["min_final_acc"] = min(a["final_acc_per_seed"]) if ok else None
        a["first_epoch_train_s"] = mean([r["epoch_train_s"][0] for r in ok if r.get("epoch_train_s")])
        for k in ("peak_mem_allocated_bytes", "peak_mem_held_bytes", "smi_peak_delta_bytes"):
            vals = [r.get(k) for r in ok if r.get(k) is not None]
            a[k] = max(vals) if vals else None
        for k in ("epoch_train_s", "epoch_train_eval_s", "test_acc_per_epoch"):
            lists = [r.get(k) or [] for r in ok]
            n = min((len(x) for x in lists), default=0)
            a[k] = [statistics.fmean(x[i] for x in lists) for i in range(n)]
        agg[key] = a
    return agg


def speed_json(doc):
    """The issue-7 record: 24-epoch totals (training + test evaluation, first epoch included, mean over
    seeds), accuracies, ratios and achieved TFLOP/s."""
    agg, meta = doc["aggregate"], doc["meta"]
    g = lambda key, field: (agg.get(key) or {}).get(field)  # noqa: E731
    ours_s, eager_s, comp_s = g(OURS, "train_eval_total_s"), g("torch_eager_amp", "train_eval_total_s"), \
        g("torch_compile", "train_eval_total_s")
    ratio = lambda a, b: a / b if a and b else None  # noqa: E731
    fwd = forward_flops(meta["width"])
    n_train, n_test, epochs = meta["train_images"], 10000, meta["epochs"]
    # With flip TTA every evaluation makes two forward passes over the test set.
    test_passes = 2 if meta.get("tta") else 1
    flop = fwd * (3 * n_train + test_passes * n_test) * epochs
    tflops = lambda s: flop / s / 1e12 if s else None  # noqa: E731
    return {
        "device": meta["device"], "date": meta["date"], "epochs": epochs, "train_images": n_train,
        "seeds": meta["seeds"], "lr_max": meta["lr_max"], "lr_min": meta["lr_min"],
        "ours_s": ours_s, "torch_eager_amp_s": eager_s, "torch_compile_s": comp_s,
        # Our precision and speed flags: without --bf16, ours_s is an f32 (TF32) run compared with
        # PyTorch's bf16 ones.
        "ours_args": meta.get("ours_args"),
        "torch_fp32_s": g("torch_fp32", "train_eval_total_s"),
        "ours_acc": g(OURS, "final_acc"), "torch_acc": g("torch_eager_amp", "final_acc"),
        "ours_acc_tta": g(OURS, "final_acc_tta"), "torch_acc_tta": g("torch_eager_amp", "final_acc_tta"),
        "ours_acc_per_seed": g(OURS, "final_acc_per_seed"),
        "torch_acc_per_seed": g("torch_eager_amp", "final_acc_per_seed"),
        "torch_compile_acc": g("torch_compile", "final_acc"), "torch_fp32_acc": g("torch_fp32", "final_acc"),
        "torch_eager_amp_over_ours": ratio(eager_s, ours_s), "torch_compile_over_ours": ratio(comp_s, ours_s),
        "ours_s_excl_first_epoch": g(OURS, "train_eval_total_s_excl_first"),
        "torch_eager_amp_s_excl_first_epoch": g("torch_eager_amp", "train_eval_total_s_excl_first"),
        "torch_compile_s_excl_first_epoch": g("torch_compile", "train_eval_total_s_excl_first"),
        "ours_train_only_s": g(OURS, "train_total_s"),
        # Our process's time before its first epoch, after its last, and between epochs outside
        # their training and evaluation (log lines, checkpoint copies), by its log (null for
        # binaries before 2026-11-27); process_wall_s less these and the epochs' training and
        # evaluation is the process's start before `main` and its exit.
        "ours_process_wall_s": g(OURS, "process_wall_s"),
        "ours_startup_s": g(OURS, "startup_s"), "ours_after_training_s": g(OURS, "after_training_s"),
        "ours_between_epochs_s": g(OURS, "between_epochs_s"),
        "ours_peak_mem_bytes": g(OURS, "peak_mem_allocated_bytes"),
        "torch_eager_amp_peak_mem_bytes": g("torch_eager_amp", "peak_mem_allocated_bytes"),
        "torch_compile_peak_mem_bytes": g("torch_compile", "peak_mem_allocated_bytes"),
        "ours_held_peak_bytes": g(OURS, "peak_mem_held_bytes"),
        "torch_eager_amp_reserved_peak_bytes": g("torch_eager_amp", "peak_mem_held_bytes"),
        "torch_compile_reserved_peak_bytes": g("torch_compile", "peak_mem_held_bytes"),
        "ours_smi_peak_bytes": g(OURS, "smi_peak_delta_bytes"),
        "torch_eager_amp_smi_peak_bytes": g("torch_eager_amp", "smi_peak_delta_bytes"),
        "torch_compile_smi_peak_bytes": g("torch_compile", "smi_peak_delta_bytes"),
        "forward_gflop_per_image": fwd / 1e9,
        "floor_pflop_issue7": ISSUE7_FLOOR_PFLOP,
        "floor_pflop_training": 3 * fwd * n_train * epochs / 1e15,
        "timed_pflop": flop / 1e15,
        "floor_s_at_800_tflops": flop / (ISSUE7_REFERENCE_TFLOPS * 1e12),
        "ours_tflops": tflops(ours_s), "torch_eager_amp_tflops": tflops(eager_s), "torch_compile_tflops": tflops(comp_s),
        "definitions": (
            "*_s: sum over the epochs of training + test-evaluation time, first epoch included, mean over seeds "
            "(ours: metrics.csv's seconds + eval_seconds, host clock after the GPU finished; PyTorch: its "
            "device-synchronised timers); *_acc: final test accuracy in percent, mean over seeds; torch_acc is the "
            "eager bf16 channels-last variant; *_acc_tta: the same with flip test-time augmentation (--tta; null "
            "without); *_over_ours: PyTorch time / our time; timed_pflop: forward FLOPs "
            "x (3 x training images + test images, twice the test images with --tta) x epochs (conv and linear "
            "multiply-adds x 2); *_tflops: "
            "timed_pflop / *_s; floor_pflop_issue7: the 2.7 PFLOP of issue 7 (training only); "
            "*_peak_mem_bytes: peak of the memory in tensors (PyTorch: max_memory_allocated; ours: the 'peak ... in "
            "tensors' of our log's 'GPU memory:' line, null if absent); *_held_peak_bytes / *_reserved_peak_bytes: "
            "peak held by the caching allocator (ours: 'peak ... held from the driver'; PyTorch: "
            "max_memory_reserved); *_smi_peak_bytes: the GPU's used memory at its peak during the run minus before it."),
    }


def fmt(v, spec=".2f", none="n/a"):
    return none if v is None else format(v, spec)


def mib(b):
    return None if b is None else b / 2**20


def write_markdown(doc, path):
    """The one table (and its per-epoch detail) as markdown."""
    meta, agg, sp = doc["meta"], doc["aggregate"], doc["speed"]
    keys = [k for k in [OURS] + list(VARIANTS) if k in agg]
    L = [f"# Side by side: our engine and PyTorch, ResNet-9 on CIFAR-10, {meta['epochs']} epochs",
         "",
         f"- device: **{meta['device']}**; date: {meta['date']}; PyTorch {meta.get('torch_version', 'n/a')}",
         f"- recipe: batch {meta['batch_size']}, {meta['train_images']} training images, one-cycle "
         f"LRMIN={meta['lr_min']:.4g} -> LRMAX={meta['lr_max']:.4g} ({meta['lr_source']}), seeds {meta['seeds']}",
         f"- command: `{meta['command']}`",
         "- times: *train* = the epochs' training loops; *train+eval* = training plus the test evaluation after "
         "each epoch (ours: metrics.csv's seconds + eval_seconds; PyTorch: synchronised timers); "
         "means over the seeds; epoch 1 holds warm-up (and compilation for torch.compile)",
         "- peak memory: *tensors* = the allocator's peak in live tensors, the dataset left out (PyTorch: "
         "max_memory_allocated after the dataset's upload less the dataset, cuDNN workspaces included; ours: our "
         "log's 'GPU memory: peak ... in tensors', without cuDNN's workspace); *held* = held by the caching allocator (PyTorch: "
         "max_memory_reserved; ours: '... held from the driver'); *GPU* = nvidia-smi's used memory at its peak "
         "during the run minus before it (the whole process: CUDA context, libraries, pools)",
         "",
         "| run | final test acc % (mean; per seed) | train+eval s | train+eval s, excl. epoch 1 | train s | "
         "train s, excl. epoch 1 | epoch 1 train s | peak tensors MiB | peak held MiB | peak GPU MiB | process wall s |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k in keys:
        a = agg[k]
        per_seed = ", ".join(fmt(x) for x in a["final_acc_per_seed"])
        failed = [s for s in a["seeds"] if s not in a["seeds_ok"]]
        note = f" (failed: seeds {failed})" if failed else ""
        L.append(f"| {a['label']}{note} | {fmt(a['final_acc'])} ({per_seed}) | {fmt(a['train_eval_total_s'])} | "
                 f"{fmt(a['train_eval_total_s_excl_first'])} | {fmt(a['train_total_s'])} | "
                 f"{fmt(a['train_total_s_excl_first'])} | {fmt(a['first_epoch_train_s'])} | "
                 f"{fmt(mib(a['peak_mem_allocated_bytes']), '.0f')} | {fmt(mib(a['peak_mem_held_bytes']), '.0f')} | "
                 f"{fmt(mib(a['smi_peak_delta_bytes']), '.0f')} | "
                 f"{fmt(a['process_wall_s'], '.1f')} |")
    outside = [r for r in doc["runs"] if r.get("variant") == OURS and (r.get("startup_line") or r.get("after_training_line"))]
    if outside:
        L += ["", "Our process's time outside its epochs' training and evaluation (its log's own lines: before the "
              "first epoch, after the last, and between epochs; the rest of *process wall s* is the process's start "
              "before `main` and its exit):"]
        for r in outside:
            L.append(f"- seed {r['seed']}: `{r.get('startup_line', 'no Start-up line')}`; "
                     f"`{r.get('after_training_line', 'no After training line')}`")
    tta_keys = [k for k in keys if agg[k].get("final_acc_tta") is not None]
    if tta_keys:
        L += ["", "With flip test-time augmentation (`--tta`: the mean of the logits of each test image and of its "
              "mirror image; D. Page, \"How to Train Your ResNet 8: Bag of Tricks\", 2019), final test accuracy %, "
              "mean (per seed): " + "; ".join(
                  f"{agg[k]['label']} {fmt(agg[k]['final_acc_tta'])} "
                  f"({', '.join(fmt(x) for x in agg[k]['final_acc_tta_per_seed'])})" for k in tta_keys)]
    L += ["",
          "## Speed (issue 7)",
          "",
          f"- training + test evaluation, all {meta['epochs']} epochs (first included), mean over seeds: ours "
          f"{fmt(sp['ours_s'])} s; PyTorch eager bf16 channels-last {fmt(sp['torch_eager_amp_s'])} s "
          f"(PyTorch / ours: {fmt(sp['torch_eager_amp_over_ours'])}); torch.compile {fmt(sp['torch_compile_s'])} s "
          f"(PyTorch / ours: {fmt(sp['torch_compile_over_ours'])})",
          f"- arithmetic timed: {sp['timed_pflop']:.4g} PFLOP ({sp['forward_gflop_per_image']:.4f} GFLOP forward per "
          f"image x (3 x {meta['train_images']} training + {20000 if meta.get('tta') else 10000} test images"
          f"{' (flip TTA: two passes)' if meta.get('tta') else ''}) x {meta['epochs']} epochs; the training "
          f"alone is {sp['floor_pflop_training']:.4g} PFLOP, issue 7's floor is {ISSUE7_FLOOR_PFLOP} PFLOP for 24 "
          f"full epochs); at {ISSUE7_REFERENCE_TFLOPS:.0f} TFLOP/s that is {sp['floor_s_at_800_tflops']:.3g} s",
          f"- achieved TFLOP/s: ours {fmt(sp['ours_tflops'], '.1f')}, PyTorch eager bf16 "
          f"{fmt(sp['torch_eager_amp_tflops'], '.1f')}, torch.compile {fmt(sp['torch_compile_tflops'], '.1f')}",
          "", "## Per epoch (means over seeds)", "",
          "| epoch | " + " | ".join(f"{agg[k]['label']}: train s / train+eval s / test acc %" for k in keys) + " |",
          "| --- | " + " | ".join("---" for _ in keys) + " |"]
    n = max((len(agg[k]["test_acc_per_epoch"]) for k in keys), default=0)
    for i in range(n):
        cells = []
        for k in keys:
            a = agg[k]
            get = lambda lst: lst[i] if i < len(lst) else None  # noqa: E731
            cells.append(f"{fmt(get(a['epoch_train_s']))} / {fmt(get(a['epoch_train_eval_s']))} / "
                         f"{fmt(get(a['test_acc_per_epoch']))}")
        L.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    prof = doc.get("profile")
    if prof:
        L += ["", "## One training step of ours, time per operation (CUDA events)", "",
              f"`{prof['command']}` (exit code {prof['exit_code']})", "", "```", prof["output"].rstrip(), "```"]
    L += ["", "## Cross-evaluation: our final checkpoint evaluated by PyTorch (fp32, strict=True)", "",
          "| seed | checkpoint | our accuracy (our log) | PyTorch's accuracy | difference (images) | flip TTA: ours / "
          "PyTorch (correct of 10000) |",
          "| --- | --- | --- | --- | --- | --- |"]
    for e in doc["cross_eval"]:
        if e.get("error") and e.get("torch_acc") is None:
            L.append(f"| {e['seed']} | {e.get('checkpoint', '')} | {fmt(e.get('ours_acc'))} | failed | | |")
            continue
        tta = f"{e.get('ours_tta_correct')} / {e.get('torch_tta_correct')}" if e.get("ours_tta_correct") is not None \
            else "n/a"
        L.append(f"| {e['seed']} | `{e['checkpoint']}` | {e.get('ours_correct')}/10000 ({fmt(e.get('ours_acc'))}%) | "
                 f"{e.get('torch_correct')}/10000 ({fmt(e.get('torch_acc'))}%) | {e.get('diff_images', 'n/a')} | {tta} |")
    errors = [r for r in doc["runs"] if r.get("error")]
    if errors:
        L += ["", "## Failed runs", ""]
        for r in errors:
            L += [f"- {LABELS[r['variant']]}, seed {r['seed']}, exit code {r['exit_code']}: `{r['command']}`", "",
                  "```", r["error"], "```"]
    L += ["", "Files: " + ", ".join(f"`{os.path.basename(p)}`" for p in doc["files"]), ""]
    with open(path, "w") as f:
        f.write("\n".join(L))


def merge_docs(paths):
    """One document from several saved ones: their runs and cross-evaluations side by side, the first one's
    settings; warns where the devices or the recipes differ (the figures would not be comparable)."""
    docs = []
    for p in paths:
        with open(p) as f:
            docs.append(json.load(f))
    doc = {"meta": dict(docs[0]["meta"]), "runs": [], "cross_eval": [],
           "profile": next((d["profile"] for d in docs if d.get("profile")), None)}
    for d in docs:
        for k in ("device", "epochs", "lr_max", "lr_min", "batch_size", "train_images", "width"):
            if d["meta"].get(k) != doc["meta"].get(k):
                print(f"warning: {k} differs between the files merged: {doc['meta'].get(k)} vs {d['meta'].get(k)}",
                      file=sys.stderr)
        doc["runs"] += d["runs"]
        doc["cross_eval"] += d["cross_eval"]
    if len(docs) > 1:
        doc["meta"]["seeds"] = sorted({r["seed"] for r in doc["runs"]})
        doc["meta"]["command"] = "; ".join(d["meta"]["command"] for d in docs)
        doc["meta"]["merged_from"] = [os.path.abspath(p) for p in paths]
    return doc


def write_outputs(doc, out, show=True):
    doc["aggregate"] = aggregate(doc["runs"])
    doc["speed"] = speed_json(doc)
    date = doc["meta"]["date"]
    paths = {k: os.path.join(out, f"{k}-{date}.{ext}")
             for k, ext in (("side-by-side", "json"), ("speed", "json"))}
    md = os.path.join(out, f"side-by-side-{date}.md")
    doc["files"] = [md, paths["side-by-side"], paths["speed"]] + [r["log"] for r in doc["runs"] if r.get("log")]
    # Written whole, then renamed over the last version: a signal during the write (the call's
    # time limit) must not leave the only copy of the finished runs' numbers cut short.
    for path, value in ((paths["side-by-side"], doc), (paths["speed"], doc["speed"])):
        with open(path + ".tmp", "w") as f:
            json.dump(value, f, indent=1)
        os.replace(path + ".tmp", path)
    write_markdown(doc, md)
    if show:
        print("\n" + open(md).read())
        print("wrote " + ", ".join(doc["files"][:3]))


# ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", help="folder of the CIFAR-10 binary files (default $CIFAR10_DIR)",
                    default=os.environ.get("CIFAR10_DIR"))
    ap.add_argument("--bin", help="our `model` binary, e.g. target/release/model")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr-max", type=float, help="peak LR for every run (with --lr-min; else our lr-find picks both)")
    ap.add_argument("--lr-min", type=float)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--subset", type=int, help="train on the first N images only (smoke tests)")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier (smoke tests)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of the pipeline)")
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS),
                    help="PyTorch variants to run (default all; none: give the flag alone)")
    ap.add_argument("--skip-ours", action="store_true",
                    help="run only the PyTorch variants (their recipe: this script's flags and train_torch.py's "
                         "defaults, which are our CLI's defaults); for splitting a session over several calls")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the table, JSON and logs")
    ap.add_argument("--runs-dir", default="runs", help="our binary's --out: the folder of its run folders")
    ap.add_argument("--python", default=sys.executable, help="the Python that has torch (default: this one)")
    ap.add_argument("--ours-args", action="append", default=[],
                    help="extra flags for our `train`, e.g. \"--label-smoothing 0.2\" (may be given more than once)")
    ap.add_argument("--torch-args", action="append", default=[],
                    help="extra flags for train_torch.py (may be given more than once)")
    ap.add_argument("--timeout-s", type=float, help="kill a run after this many seconds")
    ap.add_argument("--no-smi", action="store_true", help="do not sample nvidia-smi")
    ap.add_argument("--date", default=datetime.date.today().isoformat(), help="date in the file names")
    ap.add_argument("--from-json", metavar="FILE", nargs="+",
                    help="rewrite the table and speed JSON from saved side-by-side JSON files, merging their runs "
                         "(e.g. one file per seed from separate calls on the same machine); runs nothing")
    args = ap.parse_args(argv)
    args.ours_args = [w for text in args.ours_args for w in shlex.split(text)]
    args.torch_args = [w for text in args.torch_args for w in shlex.split(text)]
    if not args.from_json:
        if not args.data or (not args.bin and not args.skip_ours):
            ap.error("--data and --bin are required (unless --from-json, or --skip-ours for --bin)")
        if (args.lr_max is None) != (args.lr_min is None):
            ap.error("give both --lr-max and --lr-min, or neither (then our lr-find picks them)")
        if args.skip_ours and args.lr_max is None:
            ap.error("--skip-ours needs --lr-max and --lr-min")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        os.makedirs(args.out, exist_ok=True)
        write_outputs(merge_docs(args.from_json), args.out)
        return
    if args.skip_ours:
        args.bin = None
    elif os.path.exists(args.bin):
        args.bin = os.path.abspath(args.bin)
    elif not shutil.which(args.bin):
        sys.exit(f"error: our binary {args.bin} does not exist; build it with `cargo build --release -p model` "
                 "and pass --bin target/release/model")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.runs_dir, exist_ok=True)
    work = os.path.join(args.out, f"side-by-side-{args.date}")
    os.makedirs(work, exist_ok=True)
    device, names = gpu_name(args)
    print(f"Device: {device}", flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.lr_max is None:
        args.lr_max, args.lr_min, lr_source = run_lr_find(args, stamp, work)
    else:
        lr_source = "given on the command line"
    print(f"LR for every run: LRMAX={args.lr_max} LRMIN={args.lr_min} ({lr_source})", flush=True)

    profile = None
    if not args.skip_ours:
        profile = run_profile(args, work)
    runs, cross = [], []
    train_images = min(args.subset or 50000, 50000)

    def save(show=False):
        """Write the table and JSON of what has finished so far: a run cut short by the caller's
        time limit (the lent GPU machine's 10-minute calls) still leaves the runs before it."""
        torch_version = names.get("torch_version") or next(
            (r["torch_result"].get("torch") for r in runs if r.get("torch_result")), None)
        doc = {"meta": {"device": device, "device_names": names, "date": args.date, "epochs": args.epochs,
                        "seeds": args.seeds, "lr_max": args.lr_max, "lr_min": args.lr_min, "lr_source": lr_source,
                        "batch_size": args.batch_size, "train_images": train_images, "width": args.width,
                        "tta": "--tta" in args.ours_args or "--tta" in args.torch_args,
                        "ours_args": " ".join(args.ours_args),
                        "torch_version": torch_version, "bin": args.bin,
                        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)},
               "runs": runs, "cross_eval": cross, "profile": profile}
        write_outputs(doc, args.out, show)

    for seed in args.seeds:
        ours = {}
        if not args.skip_ours:
            ours = run_ours(args, seed, stamp, work, device)
            runs.append(ours)
            cross.append(cross_eval(args, ours, work))
            save()
        recipe = torch_settings(args, ours)
        for key in args.variants:
            runs.append(run_torch(args, seed, key, recipe, work))
            save()
    save(show=True)


if __name__ == "__main__":
    main()
