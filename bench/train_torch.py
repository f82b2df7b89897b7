"""The same recipe in PyTorch, for side-by-side comparison with our engine (issues 6 and 7).

What is the same as our engine (model/src/*.rs, data/src/augment.rs):
- the network: bench/resnet9.py, with our parameter names, so our checkpoints load with strict=True;
  PyTorch's default initialisation, which our engine also uses; BN momentum 0.1, eps 1e-5;
- the data: the CIFAR-10 binary files (`data_batch_{1..5}.bin`, `test_batch.bin`), normalised with the
  per-channel mean and population std of all 50,000 training images (as `data::augment::channel_stats`);
  `--subset N` trains on the first N training images only (as our `--subset`);
- the augmentation, per image: reflect-pad 4 + random 32x32 crop, horizontal flip with p=1/2, Cutout 8x8
  centred uniformly over the image, clipped at the border, filled with 0 (the mean after normalisation);
  with --cutout-inside its centre uniform in 4..=28, the whole square inside (as our --cutout-inside);
  done on the device, on the uint8 images uploaded once;
- the schedule: one-cycle per batch, linear LRMIN -> LRMAX at the end of epoch P -> linear back towards
  LRMIN at the end (model/src/schedule.rs); P defaults to round(5/24 * epochs), at least 1, as our CLI;
- the optimiser: SGD, momentum 0.9, Nesterov, weight decay 5e-4 on every parameter (torch.optim.SGD);
- batch 512, reshuffled every epoch, the last partial batch kept (50,000 = 97 x 512 + 336).
- with --ema, the evaluated network is an exponential moving average of the weights and BN buffers
  (momentum 0.99, every 5 steps, starting from the initial network: model/src/ema.rs).
The random streams (init, shuffle, augmentation) are PyTorch's, seeded from --seed: the same seed does not
give the same images as our engine, only the same distribution.

What it measures, per epoch: the training time (device synchronised before and after, so the time covers
the queued GPU work), the test-evaluation time (same), train loss/accuracy (accumulated on the device, no
host synchronisation inside the epoch), test loss/accuracy. At the end: totals with and without the first
epoch (which holds cuDNN autotuning and, with --compile, the compilation), peak GPU memory
(torch.cuda.max_memory_allocated after the dataset's upload, less the dataset, as our engine counts its
tensors; max_memory_reserved since the process started, dataset included; `dataset_device_bytes` says how
much the dataset is), and the process wall time.

    python3 bench/train_torch.py --data DIR --lr-max 0.4 --lr-min 0.004           # fp32, eager
    python3 bench/train_torch.py --data DIR ... --amp --channels-last              # bf16 autocast, NHWC
    python3 bench/train_torch.py --data DIR ... --amp --channels-last --compile    # + torch.compile
    python3 bench/train_torch.py --data DIR --eval-checkpoint runs/run-1/model.safetensors
    python3 bench/train_torch.py --data DIR --device cpu --subset 1024 --epochs 1 --batch-size 128  # smoke test

Prints one line per epoch and, last, one JSON line with everything measured (bench/side_by_side.py reads it).
"""
import argparse
import copy
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet9 import ResNet9  # noqa: E402

RECORD = 3073  # one label byte + 3x32x32 pixel bytes (CHW)
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("CIFAR10_DIR", "data/cifar-10-batches-bin"),
                    help="folder with the CIFAR-10 binary files (default $CIFAR10_DIR)")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--subset", type=int, help="train on the first N training images only")
    ap.add_argument("--lr-max", type=float, default=0.4, help="peak LR of the one-cycle schedule")
    ap.add_argument("--lr-min", type=float, default=0.004, help="first and last LR of the one-cycle schedule")
    ap.add_argument("--peak-epoch", type=int, help="epoch at whose end the LR peaks (default round(5/24 * epochs))")
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--cutout-inside", action="store_true",
                    help="Cutout's square always wholly inside the image (centre in 4..=28), as our --cutout-inside")
    ap.add_argument("--width", type=float, help="channel multiplier (default 1 = the real network; with "
                                                "--eval-checkpoint, default: from the checkpoint)")
    ap.add_argument("--out-scale", type=float, help="multiplier of the logits (default 0.125, as our CLI; with --eval-checkpoint, "
                                                    "default: from the checkpoint)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the initialisation, shuffle and augmentation")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (training and evaluation)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC model weights and inputs")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--tta", action="store_true",
                    help="also evaluate with flip test-time augmentation (mean of the logits of each test image and "
                         "of its mirror image; D. Page, 'How to Train Your ResNet 8: Bag of Tricks', 2019)")
    ap.add_argument("--ema", action="store_true",
                    help="evaluate an exponential moving average of the weights and BN buffers (momentum 0.99, "
                         "updated every 5 steps, as our engine's --ema and D. Page's bag of tricks); the trained "
                         "weights are scored once at the end")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune (default: default)")
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="let cuDNN's heuristics pick the convolution algorithms instead of timing them "
                         "(default: timed, torch.backends.cudnn.benchmark = True, as our engine's cudnnFind)")
    ap.add_argument("--no-tf32", action="store_true",
                    help="fp32 convolutions without TF32 (PyTorch's default lets cuDNN use TF32 for them)")
    ap.add_argument("--eval-checkpoint", metavar="PATH",
                    help="only load this safetensors state_dict (strict=True) and evaluate it on the test set "
                         "in fp32; width and out_scale come from its metadata unless given")
    return ap.parse_args(argv)


def load_split(data_dir, names):
    """The records of the binary files as one uint8 array [N, 3073] (label byte + 3072 CHW pixels).
    A file `NAME` that is absent is read from a gzip-compressed `NAME.gz`, as our engine does."""
    parts = []
    for n in names:
        path = os.path.join(data_dir, n)
        if os.path.exists(path):
            raw = np.fromfile(path, dtype=np.uint8)
        elif os.path.exists(path + ".gz"):
            with gzip.open(path + ".gz", "rb") as f:
                raw = np.frombuffer(f.read(), dtype=np.uint8)
            path += ".gz"
        else:
            sys.exit(f"error: {path} not found, nor {n}.gz (--data must name the folder of the CIFAR-10 binary version)")
        if raw.size % RECORD:
            sys.exit(f"error: {path} is {raw.size} bytes, not a multiple of {RECORD}")
        parts.append(raw.reshape(-1, RECORD))
    return np.concatenate(parts)


def channel_stats(train):
    """Per-channel mean and population std of the training pixels on the [0, 1] scale, as our engine
    (exact integer sums, then f64 -> f32). Returns two float32 tensors of shape [1, 3, 1, 1]."""
    px = train[:, 1:].reshape(-1, 3, 1024)
    n = px.shape[0] * 1024
    s = px.sum(axis=(0, 2), dtype=np.uint64).astype(np.float64)
    sq = np.einsum("nci,nci->c", px.astype(np.uint64), px.astype(np.uint64)).astype(np.float64)
    mean = s / n / 255.0
    std = np.sqrt(np.maximum(sq / n / (255.0 * 255.0) - mean * mean, 0.0))
    as_t = lambda a: torch.tensor(a.astype(np.float32)).view(1, 3, 1, 1)  # noqa: E731
    return as_t(mean), as_t(std)


def default_peak_epoch(epochs):
    """Our CLI's default: 5/24 of the run, rounded, at least 1 (epoch 5 of 24)."""
    return max(1, (epochs * 5 + 12) // 24)


def one_cycle(step, lr_min, lr_max, steps_per_epoch, epochs, peak_epoch):
    """LR of step `step` (0-based), the same formula as model/src/schedule.rs."""
    total = epochs * steps_per_epoch
    peak = min(peak_epoch * steps_per_epoch, total)
    if step <= peak:
        return lr_max if peak == 0 else lr_min + (lr_max - lr_min) * step / peak
    return lr_max - (lr_max - lr_min) * (step - peak) / (total - peak)


def normalize(x_u8, mean, std):
    """uint8 [N,3,32,32] -> (x/255 - mean) / std in float32, in this order (as our engine)."""
    return (x_u8.float().div_(255.0) - mean) / std


def sample_aug_params(n, gen, dev, cutout_inside=False):
    """The random choices for n images, as our AugParams::sample: crop corner uniform in 0..=8 on each axis,
    flip with probability 1/2, cutout centre uniform in 0..32 on each axis (int64 tensors [n]); with
    `cutout_inside` the centre uniform in 4..=28 (AugParams::sample_cutout_inside)."""
    lo, hi = (4, 29) if cutout_inside else (0, 32)
    crop_x = torch.randint(0, 9, (n,), device=dev, generator=gen)
    crop_y = torch.randint(0, 9, (n,), device=dev, generator=gen)
    flip = torch.rand(n, device=dev, generator=gen) < 0.5
    cut_x = torch.randint(lo, hi, (n,), device=dev, generator=gen)
    cut_y = torch.randint(lo, hi, (n,), device=dev, generator=gen)
    return crop_x, crop_y, flip, cut_x, cut_y


def apply_augment(x_u8, mean, std, crop_x, crop_y, flip, cut_x, cut_y):
    """uint8 [N,3,32,32] -> normalised, augmented float32 [N,3,32,32], the formula of data/src/augment.rs:
    out[c,y,x] = padded[c, y + crop_y, (flip ? 31-x : x) + crop_x] of the normalised image reflect-padded
    by 4, then 0 where cut_y-4 <= y < cut_y+4 and cut_x-4 <= x < cut_x+4."""
    n, dev = x_u8.shape[0], x_u8.device
    padded = F.pad(normalize(x_u8, mean, std), (4, 4, 4, 4), mode="reflect")  # [N,3,40,40]
    ar = torch.arange(32, device=dev)
    rows = crop_y[:, None] + ar[None, :]
    cols = crop_x[:, None] + torch.where(flip[:, None], 31 - ar, ar)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(3, device=dev)[None, :, None, None]
    out = padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    in_y = (ar[None, :] >= cut_y[:, None] - 4) & (ar[None, :] < cut_y[:, None] + 4)
    in_x = (ar[None, :] >= cut_x[:, None] - 4) & (ar[None, :] < cut_x[:, None] + 4)
    return out.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.0)


def augment(x_u8, mean, std, gen, cutout_inside=False):
    """Crop + flip + cutout of a batch on its device, with fresh random choices from `gen`."""
    return apply_augment(x_u8, mean, std, *sample_aug_params(x_u8.shape[0], gen, x_u8.device, cutout_inside))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def evaluate(model, x_test, y_test, mean, std, amp, channels_last, batch=1000, tta=False):
    """Test loss (mean cross-entropy, no smoothing) and number correct, in eval mode (BN running stats); with
    `tta` also those of flip test-time augmentation, the mean of the logits of each image and of its mirror
    image (as our engine's --tta), else None for both."""
    model.eval()
    dev = x_test.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    tta_loss, tta_correct = torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.int64)
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        for i in range(0, x_test.shape[0], batch):
            x = normalize(x_test[i:i + batch], mean, std)
            y = y_test[i:i + batch]
            xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            out = model(xb).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            if tta:
                xf = x.flip(3)
                xf = xf.contiguous(memory_format=torch.channels_last) if channels_last else xf.contiguous()
                avg = (out + model(xf).float()) / 2
                tta_loss += F.cross_entropy(avg, y, reduction="sum")
                tta_correct += (avg.argmax(1) == y).sum()
    model.train()
    n = x_test.shape[0]
    if not tta:
        return loss_sum.item() / n, int(correct.item()), None, None
    return loss_sum.item() / n, int(correct.item()), tta_loss.item() / n, int(tta_correct.item())


EMA_MOMENTUM, EMA_EVERY = 0.99, 5  # model/src/ema.rs


def ema_update(average, model, rho):
    """average = rho * average + (1 - rho) * model for every floating-point entry of the state_dict
    (parameters and BN running statistics), each product and the sum rounded once, as our engine's
    ops/src/ema.rs; integer entries (num_batches_tracked) are copied."""
    avg_sd, sd = average.state_dict(), model.state_dict()
    floats = [k for k, v in sd.items() if v.dtype.is_floating_point]
    with torch.no_grad():
        a, v = [avg_sd[k] for k in floats], [sd[k] for k in floats]
        torch._foreach_mul_(a, rho)
        torch._foreach_add_(a, torch._foreach_mul(v, 1.0 - rho))
        for k, t in sd.items():
            if not t.dtype.is_floating_point:
                avg_sd[k].copy_(t)


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return "cpu"


def eval_checkpoint(args, dev, mean, std, x_test, y_test):
    """Load one of our checkpoints into ResNet9 with strict=True and evaluate it in fp32 (TF32 off)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(args.eval_checkpoint, framework="pt") as f:
        meta = f.metadata() or {}
    # model/src/checkpoint.rs writes the channel counts (e.g. "[64, 128, 256, 512]") and the logit scale.
    channels = json.loads(meta["channels"]) if args.width is None and "channels" in meta else None
    width = 1.0 if args.width is None else args.width
    out_scale = float(meta.get("out_scale", 1.0)) if args.out_scale is None else args.out_scale
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = ResNet9(width=width, out_scale=out_scale, channels=channels)
    model.load_state_dict(load_file(args.eval_checkpoint), strict=True)
    model = model.to(dev)
    t0 = time.perf_counter()
    loss, correct, tta_loss, tta_correct = evaluate(model, x_test, y_test, mean, std, amp=False, channels_last=False,
                                                    tta=True)
    n = x_test.shape[0]
    channels = [layer.conv.out_channels for layer in (model.prep, model.layer1, model.layer2, model.layer3)]
    print(f"Checkpoint {args.eval_checkpoint} (channels {channels}, out_scale {out_scale}) on {device_name(dev)}: "
          f"Test set: Average loss: {loss:.4f}, Accuracy: {correct}/{n} ({100.0 * correct / n:.2f}%); "
          f"with flip TTA: Average loss: {tta_loss:.4f}, Accuracy: {tta_correct}/{n} ({100.0 * tta_correct / n:.2f}%)")
    print(json.dumps({"checkpoint": args.eval_checkpoint, "device": device_name(dev), "torch": torch.__version__,
                      "channels": channels, "out_scale": out_scale, "precision": "fp32 (TF32 off)",
                      "test_loss": loss, "test_correct": correct, "test_total": n, "test_acc": 100.0 * correct / n,
                      "test_tta_loss": tta_loss, "test_tta_correct": tta_correct,
                      "test_tta_acc": 100.0 * tta_correct / n, "eval_s": time.perf_counter() - t0}))


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device is visible to PyTorch; use --device cpu for a smoke test")
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    # Fixed shapes: time cuDNN's algorithms once per shape, as our engine does (and as D. Page's
    # reference implementation of this recipe does).
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.manual_seed(args.seed)

    train = load_split(args.data, TRAIN_FILES)
    test = load_split(args.data, TEST_FILES)
    mean, std = (t.to(dev) for t in channel_stats(train))  # over all training images, even with --subset
    if args.subset is not None:
        train = train[:args.subset]
    x_train = torch.from_numpy(train[:, 1:].reshape(-1, 3, 32, 32).copy()).to(dev)
    y_train = torch.from_numpy(train[:, 0].astype(np.int64)).to(dev)
    x_test = torch.from_numpy(test[:, 1:].reshape(-1, 3, 32, 32).copy()).to(dev)
    y_test = torch.from_numpy(test[:, 0].astype(np.int64)).to(dev)
    dataset_bytes = sum(t.numel() * t.element_size() for t in (x_train, y_train, x_test, y_test))
    # Peak memory from here on, less what is already allocated (the dataset): our engine's
    # "peak in tensors" leaves the dataset out too. (cuDNN's workspaces stay in PyTorch's figure:
    # its caching allocator hands them out; ours come from a separate block.)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base_allocated = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0

    if args.eval_checkpoint:
        eval_checkpoint(args, dev, mean, std, x_test, y_test)
        return

    peak_epoch = args.peak_epoch if args.peak_epoch is not None else default_peak_epoch(args.epochs)
    args.width = 1.0 if args.width is None else args.width
    args.out_scale = 0.125 if args.out_scale is None else args.out_scale  # our CLI's default
    model = ResNet9(width=args.width, out_scale=args.out_scale).to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # dynamic=False: one static graph per shape (training 512, the last partial batch, evaluation), as
    # our engine specialises per shape; by default the partial batch makes torch.compile switch every
    # later batch to a dynamic-shape graph.
    fwd = torch.compile(model, mode=args.compile_mode, dynamic=False) if args.compile else model
    # --ema: the average starts as a copy of the network and is what each epoch evaluates.
    average = copy.deepcopy(model) if args.ema else None
    if average is not None:
        evaluated = torch.compile(average, mode=args.compile_mode, dynamic=False) if args.compile else average
    else:
        evaluated = fwd
    opt = torch.optim.SGD(model.parameters(), lr=args.lr_min, momentum=args.momentum,
                          nesterov=not args.no_nesterov, weight_decay=args.weight_decay)
    n, bs = x_train.shape[0], args.batch_size
    spe = (n + bs - 1) // bs
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    name = device_name(dev)
    variant = ("bf16 autocast" if args.amp else "fp32") + (", channels-last" if args.channels_last else "") + \
        (", torch.compile" if args.compile else ", eager")
    print(f"Device: {name} (torch {torch.__version__}); {variant}", flush=True)
    print(f"ResNet-9 width {args.width} ({sum(p.numel() for p in model.parameters())} parameters), batch {bs}, "
          f"{args.epochs} epochs, {n} training images, seed {args.seed}", flush=True)
    print(f"One-cycle: LRMIN={args.lr_min:.4e} -> LRMAX={args.lr_max:.4e} at the end of epoch "
          f"{min(peak_epoch, args.epochs)} -> LRMIN at the end of epoch {args.epochs}", flush=True)

    rec = {k: [] for k in ("train_s", "eval_s", "train_loss", "train_acc", "test_loss", "test_acc", "test_acc_tta",
                           "lr")}
    step = 0
    for epoch in range(args.epochs):
        sync(dev)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        perm = torch.randperm(n, device=dev, generator=gen)
        for b in range(spe):
            idx = perm[b * bs:(b + 1) * bs]
            xb, yb = augment(x_train[idx], mean, std, gen, args.cutout_inside), y_train[idx]
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            lr = one_cycle(step, args.lr_min, args.lr_max, spe, args.epochs, peak_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
                logits = fwd(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * idx.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum()
            step += 1
            if average is not None and step % EMA_EVERY == 0:
                ema_update(average, model, EMA_MOMENTUM ** EMA_EVERY)
        sync(dev)
        t1 = time.perf_counter()
        # In batches of the training size, as our engine evaluates.
        test_loss, test_correct, tta_loss, tta_correct = evaluate(evaluated, x_test, y_test, mean, std, args.amp,
                                                                  args.channels_last, batch=bs, tta=args.tta)
        sync(dev)
        t2 = time.perf_counter()
        nt = x_test.shape[0]
        rec["train_s"].append(t1 - t0)
        rec["eval_s"].append(t2 - t1)
        rec["train_loss"].append(loss_sum.item() / n)
        rec["train_acc"].append(100.0 * correct.item() / n)
        rec["test_loss"].append(test_loss)
        rec["test_acc"].append(100.0 * test_correct / nt)
        rec["test_acc_tta"].append(None if tta_correct is None else 100.0 * tta_correct / nt)
        rec["lr"].append(lr)
        first_lr = one_cycle(epoch * spe, args.lr_min, args.lr_max, spe, args.epochs, peak_epoch)  # as our log
        print(f"EPOCH: {epoch + 1} (LR: {first_lr:.6f}) Train: Loss={rec['train_loss'][-1]:.4f} "
              f"Accuracy={rec['train_acc'][-1]:.2f}% ({t1 - t0:.2f}s, eval {t2 - t1:.2f}s)  "
              f"Test set: Average loss: {test_loss:.4f}, Accuracy: {test_correct}/{nt} ({rec['test_acc'][-1]:.2f}%)"
              + ("" if tta_correct is None else f"  Test set with flip TTA: Average loss: {tta_loss:.4f}, "
                 f"Accuracy: {tta_correct}/{nt} ({rec['test_acc_tta'][-1]:.2f}%)"),
              flush=True)

    trained = None
    if average is not None:
        # What the average adds: this run's trained weights, scored once (as our engine's log).
        loss_t, correct_t, _, tta_correct_t = evaluate(fwd, x_test, y_test, mean, std, args.amp, args.channels_last,
                                                       batch=bs, tta=args.tta)
        nt = x_test.shape[0]
        trained = {"acc": 100.0 * correct_t / nt, "loss": loss_t,
                   "acc_tta": None if tta_correct_t is None else 100.0 * tta_correct_t / nt}
        print(f"Trained weights without EMA: Average loss: {loss_t:.4f}, Accuracy: {correct_t}/{nt} "
              f"({trained['acc']:.2f}%)" + ("" if tta_correct_t is None else f", with flip TTA {trained['acc_tta']:.2f}%"),
              flush=True)
    tr, ev = rec["train_s"], rec["eval_s"]
    both = [a + b for a, b in zip(tr, ev)]
    cuda = dev.type == "cuda"
    result = {
        "device": name, "torch": torch.__version__, "amp": args.amp, "channels_last": args.channels_last,
        "compile": args.compile, "compile_mode": args.compile_mode,
        "tf32_conv": bool(cuda and torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(cuda and torch.backends.cudnn.benchmark),
        "seed": args.seed, "epochs": args.epochs, "batch_size": bs, "train_images": n,
        "lr_max": args.lr_max, "lr_min": args.lr_min, "peak_epoch": peak_epoch, "momentum": args.momentum,
        "nesterov": not args.no_nesterov, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing, "width": args.width, "out_scale": args.out_scale,
        "cutout_inside": args.cutout_inside,
        "epoch_train_s": tr, "epoch_eval_s": ev,
        "train_total_s": sum(tr), "train_total_s_excl_first": sum(tr[1:]),
        "train_eval_total_s": sum(both), "train_eval_total_s_excl_first": sum(both[1:]),
        "train_loss_per_epoch": rec["train_loss"], "train_acc_per_epoch": rec["train_acc"],
        "test_loss_per_epoch": rec["test_loss"], "test_acc_per_epoch": rec["test_acc"],
        "final_acc": rec["test_acc"][-1] if rec["test_acc"] else None,
        "tta": args.tta, "test_acc_tta_per_epoch": rec["test_acc_tta"] if args.tta else [],
        "final_acc_tta": rec["test_acc_tta"][-1] if args.tta and rec["test_acc_tta"] else None,
        "ema": args.ema, "trained_without_ema": trained,
        "peak_mem_allocated_bytes": torch.cuda.max_memory_allocated(dev) - base_allocated if cuda else None,
        "peak_mem_reserved_bytes": torch.cuda.max_memory_reserved(dev) if cuda else None,
        "dataset_device_bytes": dataset_bytes,
        "process_wall_s": time.perf_counter() - t_start,
    }
    tta_note = f" ({result['final_acc_tta']:.2f}% with flip TTA)" if result["final_acc_tta"] is not None else ""
    print(f"Done: test accuracy {result['final_acc']:.2f}%{tta_note} after {args.epochs} epochs, "
          f"{result['train_total_s']:.2f}s of training ({result['train_total_s_excl_first']:.2f}s without epoch 1), "
          f"{result['train_eval_total_s']:.2f}s with the evaluations; peak memory "
          + (f"{result['peak_mem_allocated_bytes'] / 2**20:.0f} MiB allocated" if cuda else "n/a (cpu)"), flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
