"""Our LR range test (model/src/lr_find.rs) written in PyTorch, for a look at the curve of the full-width
network where our engine's CPU path is too slow (or before a GPU session), and the three suggestion rules
applied to it exactly as `lr_find::suggest` does.

    python3 bench/lr_range_torch.py --data DIR [--device cpu|cuda] [--out-scale 1] [--steps 100] \\
        [--width 1] [--batch-size 512] [--csv out.csv]

Same as ours: SGD (momentum 0.9, Nesterov, weight decay 5e-4), mean cross-entropy, LR growing exponentially
from 1e-4 to 10 over `steps` full batches of shuffled, augmented images (crop with reflect padding, flip,
cutout 8x8), loss smoothed by an exponential moving average (beta 0.98) with bias correction, stopped
when the smoothed loss exceeds 4 times its minimum. Not the same: PyTorch's own random streams (other
batches and augmentations than ours) and initialisation draws. Prints the rules' suggestions and writes the
curve as CSV (lr, loss, smoothed_loss).
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet9 import ResNet9  # noqa: E402
from train_torch import TRAIN_FILES, augment, channel_stats, load_split  # noqa: E402

SLOPE_SPAN = 3  # as lr_find.rs
NO_UPTURN_TAIL = 0.05  # as lr_find.rs
UPTURN_RISE, UPTURN_MIN_FALL = 0.02, 0.05  # as lr_find.rs


def minimum_index(smooth):
    """lr_find::minimum_index: the lowest smoothed loss before its first upturn (a rise of 2% above
    the lowest so far, once the loss has fallen 5% below its start), else the lowest; None if empty."""
    if not smooth:
        return None
    best = 0
    for i, s in enumerate(smooth):
        if s < smooth[best]:
            best = i
        elif smooth[best] <= (1 - UPTURN_MIN_FALL) * smooth[0] and s > (1 + UPTURN_RISE) * smooth[best]:
            return best
    return min(range(len(smooth)), key=lambda i: smooth[i])
ONSET_FRACTION, ONSET_HALF_WINDOW, ONSET_MIN_FALL = 0.1, 5, 0.05  # as lr_find.rs


def suggest(points, rule):
    """lr_find::suggest: (lr_max, lr_min) from [(lr, raw, smoothed)]."""
    finite = [(lr, s) for lr, _, s in points if math.isfinite(s) and lr > 0]
    imin = minimum_index([s for _, s in finite])
    if rule == "minimum":
        lr = finite[imin][0]
    elif rule == "steepest":
        def slope(i):
            a, b = max(i - SLOPE_SPAN, 0), min(i + SLOPE_SPAN, imin)
            if b <= a:
                return math.inf
            return (finite[b][1] - finite[a][1]) / (math.log(finite[b][0]) - math.log(finite[a][0]))
        lr = finite[min(range(imin + 1), key=slope)][0]
    else:  # valley: the longest strictly decreasing subsequence, half-way through its middle third
        v = [s for _, s in finite]
        run, first, best = [1] * len(v), list(range(len(v))), 0
        for i in range(len(v)):
            for j in range(i):
                if v[i] < v[j] and run[j] + 1 > run[i]:
                    run[i], first[i] = run[j] + 1, first[j]
            if run[i] > run[best]:
                best = i
        start, span = first[best], best - first[best]
        lr = finite[start + span // 3 + span // 6][0]
    return lr, lr / 10


def no_upturn(points, diverged):
    """lr_find::no_upturn: no divergence (a 4x rise; a non-finite loss does not count) and the minimum
    rule's point in the last 5% of the points."""
    finite = [s for lr, _, s in points if math.isfinite(s) and lr > 0]
    if not finite:
        return False
    imin = minimum_index(finite)
    tail = max(math.ceil(len(finite) * NO_UPTURN_TAIL), 1)
    return not diverged and imin + tail >= len(finite)


def onset(points):
    """lr_find::onset: the first LR at which the centred average (+-5 points) of the raw losses has
    made a tenth of its fall from its start to its minimum; None without a fall of 5% of the start."""
    finite = [(lr, raw) for lr, raw, _ in points if math.isfinite(raw) and lr > 0]
    h = ONSET_HALF_WINDOW
    if len(finite) < 2 * h + 2:
        return None
    centred = [(finite[i][0], sum(r for _, r in finite[i - h:i + h + 1]) / (2 * h + 1))
               for i in range(h, len(finite) - h)]
    start = centred[0][1]
    imin = min(range(len(centred)), key=lambda i: centred[i][1])
    if start - centred[imin][1] < ONSET_MIN_FALL * abs(start):
        return None
    threshold = start - ONSET_FRACTION * (start - centred[imin][1])
    return next((lr for lr, c in centred[:imin + 1] if c < threshold), None)


def lr_min_rules(lr_max, points):
    """LRMIN by lr_find.rs's rules: tenth, and onset kept within [LRMAX/100, LRMAX/10]."""
    at = onset(points)
    return {"tenth": lr_max / 10,
            "onset": lr_max / 10 if at is None else min(max(at, lr_max / 100), lr_max / 10), "onset_lr": at}


def report(points, diverged, what, lr_rule="minimum", lr_min_rule="onset", rose=None):
    """`rose`: whether the test stopped on the 4x rise, not on a non-finite loss (as lr_find.rs,
    only that counts as an upturn); None: as `diverged` (a curve read from a file)."""
    rose = diverged if rose is None else rose
    rules = {r: suggest(points, r)[0] for r in ("minimum", "steepest", "valley")}
    mins = lr_min_rules(rules["minimum"], points)
    at = "none" if mins["onset_lr"] is None else f"{mins['onset_lr']:.3e}"
    print(f"{len(points)} steps{' (stopped at divergence)' if diverged else ''}; {what}; initial smoothed loss "
          f"{points[0][2]:.4f}; LRMAX by rule: " + ", ".join(f"{r} {v:.3e}" for r, v in rules.items())
          + f"; with the minimum rule's LRMAX, LRMIN by rule: tenth {mins['tenth']:.3e}, onset {mins['onset']:.3e} "
          f"(the loss starts to fall at {at})", flush=True)
    # The suggestion by the chosen rules, in our CLI's words (bench/side_by_side.py reads this line).
    if lr_rule == "minimum" and no_upturn(points, rose):
        # as lr_find.rs: a minimum at the range's end only marks the end; take the steepest descent
        print("the loss never turned up inside the range: LRMAX from the steepest rule, not the minimum", flush=True)
        lr_rule = "steepest"
    lr_max = rules[lr_rule]
    print(f"suggestion (rules {lr_rule} and {lr_min_rule}): LRMAX={lr_max:.4e} "
          f"LRMIN={lr_min_rules(lr_max, points)[lr_min_rule]:.4e}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("CIFAR10_DIR"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--out-scale", type=float, default=0.125, help="multiplier of the logits (our CLI's default, 0.125)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--start-lr", type=float, default=1e-4)
    ap.add_argument("--end-lr", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    ap.add_argument("--csv", help="write the curve here")
    ap.add_argument("--from-csv", metavar="CSV", help="no training: apply the rules to a curve this script wrote")
    ap.add_argument("--lr-rule", default="minimum", choices=["minimum", "steepest", "valley"],
                    help="the rule of the last line's LRMAX (as our CLI's --lr-rule)")
    ap.add_argument("--lr-min-rule", default="onset", choices=["tenth", "onset"],
                    help="the rule of the last line's LRMIN (as our CLI's --lr-min-rule)")
    args = ap.parse_args()
    if args.from_csv:
        with open(args.from_csv) as f:
            rows = [line.strip().split(",") for line in f.readlines()[1:] if line.strip()]
        report([(float(lr), float(raw), float(sm)) for lr, raw, sm in rows], False, f"the curve of {args.from_csv}",
               args.lr_rule, args.lr_min_rule)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    train = load_split(args.data, TRAIN_FILES)
    mean, std = (t.to(dev) for t in channel_stats(train))
    x = torch.from_numpy(train[:, 1:].reshape(-1, 3, 32, 32).copy()).to(dev)
    y = torch.from_numpy(train[:, 0].astype("int64")).to(dev)
    model = ResNet9(width=args.width, out_scale=args.out_scale).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=args.start_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    n, bs, beta = x.shape[0], args.batch_size, 0.98
    points, avg, best, step, t0 = [], 0.0, math.inf, 0, time.perf_counter()
    diverged = rose = False  # rose: stopped on the 4x rise (an upturn), not on a non-finite loss
    while step < args.steps and not diverged:
        perm = torch.randperm(n, device=dev, generator=gen)
        for b in range(n // bs):
            lr = args.start_lr * (args.end_lr / args.start_lr) ** (step / (args.steps - 1))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[b * bs:(b + 1) * bs]
            loss = F.cross_entropy(model(augment(x[idx], mean, std, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            raw = loss.item()
            if not math.isfinite(raw):
                diverged = True
                break
            avg = beta * avg + (1 - beta) * raw
            smooth = avg / (1 - beta ** (step + 1))
            points.append((lr, raw, smooth))
            best = min(best, smooth)
            step += 1
            print(f"step {step:3d} lr {lr:.3e} loss {raw:.4f} smoothed {smooth:.4f} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
            if smooth > 4 * best:
                diverged = rose = True
                break
            if step == args.steps:
                break
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("lr,loss,smoothed_loss\n")
            for lr, raw, s in points:
                f.write(f"{lr:.6e},{raw:.6f},{s:.6f}\n")
    # As lr_find.rs: a test that diverged within its first tenth (at least 3 points) has no curve to read.
    if diverged and len(points) < max(args.steps // 10, 3):
        sys.exit(f"error: the LR range test diverged after {len(points)} of its {args.steps} steps, near the start "
                 f"of its range: no LR can be read from it")
    report(points, diverged, f"width {args.width}, out scale {args.out_scale}, batch {bs}", args.lr_rule,
           args.lr_min_rule, rose)


if __name__ == "__main__":
    main()
