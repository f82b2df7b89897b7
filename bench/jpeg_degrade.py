"""Re-encode a CIFAR-10 binary folder through JPEG at a given quality (issue 6: how much accuracy does
JPEG compression cost this recipe?).

`../shared/cifar10` is itself decoded from JPEG files of quality 75 (its SOURCE.md: mean PSNR about 30.5 dB
against the lossless images). Without the lossless files, the cost of that compression cannot be measured
directly; what can be measured is the cost of one more round of it: train the same recipe on the folder
as it is and on a copy degraded once more, by about as much (a PSNR against the folder near 30.5 dB), and
compare the test accuracies. Both splits are re-encoded (train and test come from the same JPEG source).

    python3 bench/jpeg_degrade.py --data ../shared/cifar10 --out /tmp/cifar10-q40 --quality 40
    python3 bench/jpeg_degrade.py --data ../shared/cifar10 --psnr-only --quality 30 40 50 75

Writes the six `.bin` files in the official layout (labels and order unchanged) and prints, per file, the
mean PSNR of the re-encoded images against the input (per image over its 3072 bytes, then the mean; an
identical image, infinite PSNR, counts as 100 dB). Needs Pillow (its libjpeg, default 4:2:0 chroma
subsampling, standard quantisation tables scaled by the quality, as most JPEG writers do).
"""
import argparse
import io
import math
import os
import sys

import numpy as np
from PIL import Image

FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
RECORD = 1 + 3072


def reencode(pixels: np.ndarray, quality: int) -> np.ndarray:
    """pixels: [n, 3072] uint8 in the CIFAR order (1024 R, 1024 G, 1024 B); the same after one JPEG round trip."""
    out = np.empty_like(pixels)
    for i, p in enumerate(pixels):
        hwc = p.reshape(3, 32, 32).transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(hwc, "RGB").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        back = np.asarray(Image.open(buf).convert("RGB"))
        out[i] = back.transpose(2, 0, 1).reshape(3072)
    return out


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of 10 log10(255^2 / MSE), an identical image counted as 100 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=1)
    psnr = np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 100.0)
    return float(psnr.mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with the six CIFAR-10 .bin files")
    ap.add_argument("--out", help="folder to write the re-encoded files to (created)")
    ap.add_argument("--quality", type=int, nargs="+", required=True, help="JPEG quality 1-95 (several with --psnr-only)")
    ap.add_argument("--psnr-only", action="store_true", help="print the PSNR of each quality on 2,000 images, write nothing")
    args = ap.parse_args()
    for q in args.quality:
        if not 1 <= q <= 95:
            ap.error(f"quality {q} is outside 1-95")
    if args.psnr_only:
        raw = np.fromfile(os.path.join(args.data, "data_batch_1.bin"), dtype=np.uint8)
        pixels = raw.reshape(-1, RECORD)[:2000, 1:]
        for q in args.quality:
            print(f"quality {q}: mean PSNR {mean_psnr(pixels, reencode(pixels, q)):.2f} dB against the input (2,000 images of data_batch_1.bin)")
        return 0
    if args.out is None or len(args.quality) != 1:
        ap.error("give --out and one --quality (or --psnr-only)")
    os.makedirs(args.out, exist_ok=True)
    for name in FILES:
        raw = np.fromfile(os.path.join(args.data, name), dtype=np.uint8)
        if raw.size % RECORD:
            print(f"error: {name}: {raw.size} bytes is not a whole number of {RECORD}-byte records", file=sys.stderr)
            return 1
        recs = raw.reshape(-1, RECORD).copy()
        before = recs[:, 1:].copy()
        recs[:, 1:] = reencode(before, args.quality[0])
        recs.tofile(os.path.join(args.out, name))
        print(f"{name}: {len(recs)} images, mean PSNR {mean_psnr(before, recs[:, 1:]):.2f} dB against the input", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
