"""The same recipe in PyTorch, for side-by-side comparison with our engine (issues 6 and 7).

Same network (resnet9.py, same parameter names), same data (the CIFAR-10 binary files, uploaded to the GPU
once as uint8), same augmentation (reflect-pad 4 + random 32x32 crop, horizontal flip p=0.5, Cutout 8x8
filled with the mean, i.e. 0 after normalisation), same one-cycle schedule per batch (linear LRMIN -> LRMAX
at the end of epoch 5 -> linear back to LRMIN at the end), SGD momentum 0.9 Nesterov weight decay 5e-4,
batch 512 with the last partial batch kept.

    python3 bench/train_torch.py --data DIR --lr-max 0.4 --lr-min 0.004 [--amp] [--compile] [--channels-last]
    python3 bench/train_torch.py --data DIR --eval-checkpoint runs/run-1/model.safetensors

Prints one line per epoch and a final JSON line with the timings, accuracies and peak memory.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet9 import ResNet9  # noqa: E402


def load_split(data_dir, names):
    """Records of the binary files as one uint8 array [N, 3073] (label byte + 3072 CHW pixels)."""
    parts = [np.fromfile(os.path.join(data_dir, n), dtype=np.uint8).reshape(-1, 3073) for n in names]
    return np.concatenate(parts)


def one_cycle(step, lr_min, lr_max, steps_per_epoch, epochs, peak_epoch):
    """Same formula as model/src/schedule.rs."""
    total = epochs * steps_per_epoch
    peak = min(peak_epoch * steps_per_epoch, total)
    if step <= peak:
        return lr_max if peak == 0 else lr_min + (lr_max - lr_min) * step / peak
    return lr_max - (lr_max - lr_min) * (step - peak) / (total - peak)


def augment(x, gen):
    """x: uint8 [N,3,32,32] on the GPU -> normalised, augmented float [N,3,32,32] (crop, flip, cutout)."""
    n = x.shape[0]
    dev = x.device
    xf = x.float().div_(255.0)
    xf = (xf - MEAN.to(dev)) / STD.to(dev)
    padded = F.pad(xf, (4, 4, 4, 4), mode="reflect")
    cx = torch.randint(0, 9, (n,), device=dev, generator=gen)
    cy = torch.randint(0, 9, (n,), device=dev, generator=gen)
    ar = torch.arange(32, device=dev)
    rows = (cy[:, None] + ar[None, :])  # [N,32]
    cols = (cx[:, None] + ar[None, :])
    flip = torch.rand(n, device=dev, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(3, device=dev)[None, :, None, None]
    out = padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    # Cutout 8x8 centred uniformly over the image, clipped at the border, filled with 0 (= the mean).
    ux = torch.randint(0, 32, (n,), device=dev, generator=gen)
    uy = torch.randint(0, 32, (n,), device=dev, generator=gen)
    my = (ar[None, :] >= (uy[:, None] - 4)) & (ar[None, :] < (uy[:, None] + 4))
    mx = (ar[None, :] >= (ux[:, None] - 4)) & (ar[None, :] < (ux[:, None] + 4))
    mask = my[:, :, None] & mx[:, None, :]
    return out.masked_fill(mask[:, None, :, :], 0.0)


def evaluate(model, x_test, y_test, amp):
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        for i in range(0, x_test.shape[0], 1000):
            xb = (x_test[i:i + 1000].float().div(255.0) - MEAN.cuda()) / STD.cuda()
            out = model(xb).float()
            loss_sum += F.cross_entropy(out, y_test[i:i + 1000], reduction="sum").item()
            correct += (out.argmax(1) == y_test[i:i + 1000]).sum().item()
    model.train()
    return loss_sum / x_test.shape[0], correct


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("CIFAR10_DIR", "data/cifar-10-batches-bin"))
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr-max", type=float, default=0.4)
    ap.add_argument("--lr-min", type=float, default=0.004)
    ap.add_argument("--peak-epoch", type=int, default=5)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--eval-checkpoint", help="only evaluate this safetensors state_dict on the test set")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    dev = torch.device("cuda")
    train = load_split(args.data, [f"data_batch_{i}.bin" for i in range(1, 6)])
    test = load_split(args.data, ["test_batch.bin"])
    global MEAN, STD
    px = train[:, 1:].reshape(-1, 3, 1024).astype(np.float64) / 255.0
    MEAN = torch.tensor(px.mean(axis=(0, 2)), dtype=torch.float32).view(1, 3, 1, 1)
    STD = torch.tensor(px.std(axis=(0, 2)), dtype=torch.float32).view(1, 3, 1, 1)
    x_train = torch.from_numpy(train[:, 1:].reshape(-1, 3, 32, 32).copy()).to(dev)
    y_train = torch.from_numpy(train[:, 0].astype(np.int64)).to(dev)
    x_test = torch.from_numpy(test[:, 1:].reshape(-1, 3, 32, 32).copy()).to(dev)
    y_test = torch.from_numpy(test[:, 0].astype(np.int64)).to(dev)

    model = ResNet9().to(dev)
    if args.eval_checkpoint:
        import safetensors.torch
        model.load_state_dict(safetensors.torch.load_file(args.eval_checkpoint))
        loss, correct = evaluate(model, x_test, y_test, amp=False)
        print(json.dumps({"checkpoint": args.eval_checkpoint, "test_loss": loss, "test_correct": correct,
                          "test_acc": 100.0 * correct / x_test.shape[0]}))
        return
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=args.lr_min, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    n = x_train.shape[0]
    spe = (n + args.batch_size - 1) // args.batch_size
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    torch.cuda.reset_peak_memory_stats()
    epoch_times, accs = [], []
    step = 0
    for epoch in range(args.epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev, generator=gen)
        for b in range(spe):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            xb = augment(x_train[idx], gen)
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = one_cycle(step, args.lr_min, args.lr_max, spe, args.epochs, args.peak_epoch)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp):
                loss = F.cross_entropy(fwd(xb).float(), y_train[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        test_loss, correct = evaluate(fwd, x_test, y_test, args.amp)
        epoch_times.append(dt)
        accs.append(100.0 * correct / x_test.shape[0])
        print(f"EPOCH: {epoch + 1} train {dt:.2f}s  Test set: Average loss: {test_loss:.4f}, "
              f"Accuracy: {correct}/{x_test.shape[0]} ({accs[-1]:.2f}%)", flush=True)
    print(json.dumps({
        "device": torch.cuda.get_device_name(0), "amp": args.amp, "compile": args.compile,
        "channels_last": args.channels_last, "epoch_seconds": epoch_times,
        "total_s": sum(epoch_times), "total_s_excl_first": sum(epoch_times[1:]),
        "test_acc_per_epoch": accs, "final_acc": accs[-1],
        "peak_mem_bytes": torch.cuda.max_memory_allocated(),
    }))


MEAN = STD = None

if __name__ == "__main__":
    main()
