#!/usr/bin/env python3
"""CIFAR-10's "python version" (the pickled batches torchvision downloads, in
`cifar-10-batches-py/`) rewritten as the "binary version" our program reads (`data_batch_1.bin`
... `data_batch_5.bin`, `test_batch.bin`: per image one label byte, then 1024 red, 1024 green and
1024 blue bytes, rows top to bottom). Both versions hold the same 60,000 images losslessly, in
the same order; only the container differs.

Why: `../shared/cifar10` is decoded from JPEG (its SOURCE.md), and issue 6 asks how much of the
3 points between our 91% and the recipe's 94% that costs. A GPU machine that has the official
files in either version settles it with one `train` run. `scripts/gpu/on-gpu.sh stage` looks for
them.

    python3 bench/cifar_py_to_bin.py SRC_DIR OUT_DIR     # SRC_DIR holds data_batch_1 ... test_batch
    python3 bench/cifar_py_to_bin.py --selftest          # round trip of a made-up batch

Only the standard library and numpy.
"""
import argparse
import os
import pickle
import sys
import tempfile

import numpy as np

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
RECORD = 1 + 3 * 32 * 32


def load_batch(path):
    """(labels [N] uint8, pixels [N, 3072] uint8) of one pickled batch."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected data [N, 3072] and labels [N], got {data.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels outside 0..9")
    return labels.astype(np.uint8), data


def to_records(labels, data):
    """The binary version's bytes: one label byte, then the 3072 pixel bytes, per image."""
    out = np.empty((data.shape[0], RECORD), dtype=np.uint8)
    out[:, 0] = labels
    out[:, 1:] = data
    return out.tobytes()


def convert(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in NAMES:
        labels, data = load_batch(os.path.join(src, name))
        path = os.path.join(dst, name + ".bin")
        with open(path, "wb") as f:
            f.write(to_records(labels, data))
        print(f"{os.path.join(src, name)} ({data.shape[0]} images) -> {path}")


def selftest():
    rng = np.random.default_rng(0)
    n = 7
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "py"), os.path.join(tmp, "bin")
        os.makedirs(src)
        for name in NAMES:
            with open(os.path.join(src, name), "wb") as f:
                pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x"] * n}, f)
        convert(src, dst)
        raw = open(os.path.join(dst, "test_batch.bin"), "rb").read()
        assert len(raw) == n * RECORD, len(raw)
        for i in range(n):
            rec = raw[i * RECORD:(i + 1) * RECORD]
            assert rec[0] == labels[i], (i, rec[0], labels[i])
            assert rec[1:] == data[i].tobytes(), i
    print("selftest: ok")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", nargs="?")
    p.add_argument("dst", nargs="?")
    p.add_argument("--selftest", action="store_true")
    a = p.parse_args()
    if a.selftest:
        selftest()
    elif a.src and a.dst:
        convert(a.src, a.dst)
    else:
        p.error("give SRC_DIR and OUT_DIR, or --selftest")


if __name__ == "__main__":
    sys.exit(main())
