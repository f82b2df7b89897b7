"""Load one of our checkpoints into the PyTorch ResNet-9 (bench/resnet9.py) and evaluate it on the
CIFAR-10 test set, independently of our engine: the state_dict must load with strict=True (same names,
shapes, dtypes) and the accuracy must equal the one our run printed. Also prints the accuracy with flip
test-time augmentation (the mean of the logits of each image and of its mirror image), for runs with --tta.

    python3 bench/eval_checkpoint.py runs/run-1/model.safetensors --data DIR

The network's channel counts and logit scale come from the checkpoint's metadata unless --width or
--out-scale is given; the inputs are normalised with the mean and std saved there too (files written
before 2026-11-27: those of the training files in --data, as the engine computes them). Prints one JSON line. Runs on the GPU when there is one, else on the CPU, in fp32
(TF32 off, as bench/train_torch.py --eval-checkpoint), so that the counts compare with ours.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet9 import ResNet9  # noqa: E402
from train_torch import TEST_FILES, TRAIN_FILES, load_split  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--width", type=float, help="channel multiplier (default: the checkpoint's channel counts)")
    ap.add_argument("--out-scale", type=float, help="multiplier of the logits (default: the checkpoint's metadata)")
    ap.add_argument("--data", default=os.environ.get("CIFAR10_DIR", "data/cifar-10-batches-bin"))
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    test = load_split(args.data, TEST_FILES)
    # Our checkpoints record the channel counts, the logit scale and (since 2026-11-27) the
    # normalisation of the inputs and the data the run read (`trained_on`, its log's `Data:`
    # line) in their metadata (model/src/checkpoint.rs).
    with safe_open(args.checkpoint, "pt") as f:
        meta = f.metadata() or {}
    if "pixel_mean" in meta and "pixel_std" in meta:
        # The f32 values the run normalised with (printed so that they read back exactly).
        mean = torch.tensor(json.loads(meta["pixel_mean"]), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(json.loads(meta["pixel_std"]), dtype=torch.float32).view(1, 3, 1, 1)
        normalisation = "saved in the checkpoint"
    else:
        # Same normalisation as the engine: per-channel mean and population std of the training pixels.
        px = load_split(args.data, TRAIN_FILES)[:, 1:].reshape(-1, 3, 1024).astype(np.float64) / 255.0
        mean = torch.tensor(px.mean(axis=(0, 2)), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(px.std(axis=(0, 2)), dtype=torch.float32).view(1, 3, 1, 1)
        normalisation = "computed from the training files"
    if args.out_scale is None:
        args.out_scale = float(meta.get("out_scale", 1.0))
    channels = json.loads(meta["channels"]) if args.width is None and "channels" in meta else None
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = ResNet9(width=1.0 if args.width is None else args.width, out_scale=args.out_scale, channels=channels)
    model.load_state_dict(load_file(args.checkpoint), strict=True)
    model = model.to(dev).eval()
    x = (torch.from_numpy(test[:, 1:].reshape(-1, 3, 32, 32).copy()).float() / 255.0 - mean) / std
    y = torch.from_numpy(test[:, 0].astype(np.int64))
    correct, loss, tta_correct, tta_loss = 0, 0.0, 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), 1000):
            xb, yb = x[i:i + 1000].to(dev), y[i:i + 1000]
            out = model(xb).cpu()
            loss += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
            avg = (out + model(xb.flip(3)).cpu()) / 2
            tta_loss += F.cross_entropy(avg, yb, reduction="sum").item()
            tta_correct += (avg.argmax(1) == yb).sum().item()
    print(json.dumps({"checkpoint": args.checkpoint, "device": str(dev), "torch": torch.__version__,
                      "normalisation": normalisation, "trained_on": meta.get("trained_on"),
                      "test_loss": loss / len(y), "correct": correct, "accuracy": 100.0 * correct / len(y),
                      "tta_test_loss": tta_loss / len(y), "tta_correct": tta_correct,
                      "tta_accuracy": 100.0 * tta_correct / len(y)}))


if __name__ == "__main__":
    main()
