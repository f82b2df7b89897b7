#!/usr/bin/env python3
"""The official CIFAR-10 files, from wherever a machine happens to hold them, as one folder of the
binary version that our program reads, checked against what is published about the originals.

Why: `../shared/cifar10` is decoded from JPEG (its SOURCE.md), both engines end near 91% on it where
the recipe is known for 94% (issue 6), and only a run on the lossless originals says how much of that
the JPEG round costs. The GPU machine has no network; `scripts/gpu/on-gpu.sh stage` lists the copies
it finds (a torchvision cache, say) in `cifar-search-<date>.txt`, and its `official` step gives that
list to this script.

    python3 bench/official_cifar.py --candidates LIST --out DIR   # LIST: one path per line
    python3 bench/official_cifar.py --selftest

Each candidate is tried in order until one passes:
- a `cifar-10-batches-py` folder (the python version): each pickle's MD5 must be the published one
  (the values torchvision checks), then bench/cifar_py_to_bin.py rewrites it as the binary version;
- a `cifar-10-batches-bin` folder (the binary version, for which no per-file MD5 is published);
- a `cifar-10-*.tar.gz` archive: its MD5 must be one of the two published ones (python or binary
  version); it is extracted beside DIR and its folder tried as above;
- a folder of Hugging Face's CIFAR-10 (`uoft-cs/cifar10`: the hub's parquet files or the `datasets`
  cache's arrow files, whose `img` column holds each image as a PNG, lossless): the files whose
  names say `train` and `test` are decoded and written as the binary version (needs pyarrow and
  Pillow; without them the candidate is rejected and the report says so).
Every folder that is to be used, the one written included, must then pass the checks of the binary
version, which look at the pixels themselves: six files of 10,000 records, labels within 0..9,
5,000 training and 1,000 test images of every class, and the per-channel mean and standard
deviation of the 50,000 training images and, apart, of the 10,000 test images (every pixel value,
in exact integer sums) equal to the published ones within 1e-9 (`Published` says where they come
from). One pixel value changed by one moves a training mean by about 8e-11; a JPEG round moves the
statistics far more: ../shared/cifar10's training std is [0.24523161, 0.24278155, 0.26062877],
1.8e-3 below the originals' in red. The record order is reported, not required: the official order
starts with the labels 6 9 9 4 1 1 2 7 8 3, and training reshuffles every epoch.
DIR then holds the six `.bin` files (copies, or links to a binary folder that passed) and
`official-source.txt`, which says where they came from and which checks they passed; when no
candidate passes, DIR is left without either. Exit status: 0 when DIR is ready, 3 when no candidate
passed (each one's reason is printed), 2 on a usage error (argparse's).

Only the standard library and numpy (pyarrow and Pillow for the Hugging Face files).
"""
import argparse
import dataclasses
import hashlib
import io
import os
import pickle
import re
import sys
import tarfile
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar_py_to_bin  # noqa: E402  (the python -> binary rewrite, checked by its own --selftest)

RECORD = 1 + 3 * 32 * 32
IMAGES_PER_FILE = 10_000
BIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
# How far a split's per-channel mean and std may be from the published values. These are quoted to
# 16 or 17 digits, and the quotations agree with each other to 1e-15; our sums of integers are exact
# and the std's float64 arithmetic is good to about 1e-14. One pixel value off by one moves a
# training mean by 1 / (255 * 51.2 million) = 7.7e-11, so 1e-9 lets through no more than about a
# dozen such changes and nothing a lossy re-encoding does.
PIXEL_TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Published:
    """What is published about the official files, against which a candidate is checked."""
    # The python version's pickles (torchvision's CIFAR10 class checks these per file).
    py_md5: dict
    # The archives' MD5s (the CIFAR-10 page), and the folder each one holds.
    archive_md5: dict
    # The first ten labels of data_batch_1 in the official order (reported, not required).
    first_labels: list
    # Per-channel (R, G, B) mean and std (population) of the pixels / 255 of the 50,000 training
    # images, and of the 10,000 test images apart.
    train_mean: tuple
    train_std: tuple
    test_mean: tuple
    test_std: tuple


OFFICIAL = Published(
    py_md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    archive_md5={
        "c58f30108f718f92721af3b95e74349a": "cifar-10-batches-py",
        "c32a1d4ab5d03f1284b67883e8d87530": "cifar-10-batches-bin",
    },
    first_labels=[6, 9, 9, 4, 1, 1, 2, 7, 8, 3],
    # The normalisation constants quoted for CIFAR-10: to 8 decimals almost everywhere
    # ([0.49139968, 0.48215841, 0.44653091], [0.24703223, 0.24348513, 0.26158784] for training;
    # [0.49421428, 0.48513139, 0.45040909], [0.24665252, 0.24289226, 0.26159238] for test), and in
    # full as printed by training scripts that compute them from torchvision's copy (found with the
    # `search` tool's code index, in comments of several unrelated repositories, 2026-11-27).
    train_mean=(0.49139967861519607, 0.48215840839460783, 0.44653091444546567),
    train_std=(0.2470322324632819, 0.24348512800005573, 0.26158784172796434),
    test_mean=(0.4942142800245098, 0.4851313890165441, 0.4504090927542892),
    test_std=(0.24665251509498004, 0.24289226346005355, 0.26159237802202373),
)


class Rejected(Exception):
    """A candidate that is not (or not provably) the official files; the message says why."""


def md5_of(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pixel_stats(d, names):
    """Per-channel mean and std (population) of the pixels / 255 of the binary files `names` in
    folder `d`, from exact integer sums: (mean [3], std [3]) in float64."""
    total = np.zeros(3, np.int64)
    squares = np.zeros(3, np.int64)
    count = 0
    for name in names:
        px = np.fromfile(os.path.join(d, name), dtype=np.uint8).reshape(IMAGES_PER_FILE, RECORD)[:, 1:]
        px = px.reshape(IMAGES_PER_FILE, 3, 1024)
        total += px.sum(axis=(0, 2), dtype=np.int64)
        squares += np.square(px, dtype=np.int64).sum(axis=(0, 2))
        count += IMAGES_PER_FILE * 1024
    mean = total / count
    return mean / 255, np.sqrt(squares / count - mean * mean) / 255


def check_bin_dir(d, pub=OFFICIAL):
    """The checks a binary folder must pass; returns a line per check, raises Rejected."""
    lines = []
    counts = {"train": np.zeros(10, np.int64), "test": np.zeros(10, np.int64)}
    first = None
    for name in BIN_FILES:
        path = os.path.join(d, name)
        if not os.path.isfile(path):
            raise Rejected(f"{path} is missing")
        size = os.path.getsize(path)
        if size != IMAGES_PER_FILE * RECORD:
            raise Rejected(f"{path} has {size} bytes, not {IMAGES_PER_FILE * RECORD} (10,000 records)")
        labels = np.fromfile(path, dtype=np.uint8).reshape(IMAGES_PER_FILE, RECORD)[:, 0]
        if labels.max() > 9:
            raise Rejected(f"{path} has a label byte {int(labels.max())}, outside 0..9")
        if name == "data_batch_1.bin":
            first = labels[:10].tolist()
        counts["test" if name == "test_batch.bin" else "train"] += np.bincount(labels, minlength=10)
    for split, want in (("train", 5000), ("test", 1000)):
        if not (counts[split] == want).all():
            raise Rejected(f"{d}: {split} images per class are {counts[split].tolist()}, not {want} each")
    lines.append("six files of 10,000 records each; labels within 0..9")
    lines.append("5,000 training and 1,000 test images of every class")
    fmt = lambda v: "[" + ", ".join(f"{x:.8f}" for x in v) + "]"  # noqa: E731
    for split, names, want_mean, want_std in (("training", BIN_FILES[:5], pub.train_mean, pub.train_std),
                                              ("test", BIN_FILES[5:], pub.test_mean, pub.test_std)):
        mean, std = pixel_stats(d, names)
        off = max(np.abs(mean - want_mean).max(), np.abs(std - want_std).max())
        if off > PIXEL_TOL:
            raise Rejected(f"{d}: the {split} pixels' per-channel mean {fmt(mean)} and std {fmt(std)} are not the "
                           f"published {fmt(want_mean)} and {fmt(want_std)} (off by up to {off:.1e}, "
                           f"allowed {PIXEL_TOL:.0e}): other pixels than the originals' (a JPEG round, say)")
        lines.append(f"the {split} pixels' per-channel mean {fmt(mean)} and std {fmt(std)} are the published "
                     f"ones within {PIXEL_TOL:.0e} (off by up to {off:.1e})")
    if first == list(pub.first_labels):
        lines.append(f"records in the official order (data_batch_1.bin starts with the labels {first})")
    else:
        lines.append(f"records not in the official order (data_batch_1.bin starts with {first}, not "
                     f"{list(pub.first_labels)}); training reshuffles every epoch, so this does not matter")
    return lines


def prepare_py(src, out, pub):
    lines = []
    for name, want in pub.py_md5.items():
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            raise Rejected(f"{path} is missing")
        got = md5_of(path)
        if got != want:
            raise Rejected(f"{path} has MD5 {got}, not the published {want}")
    lines.append("the six pickles have the published MD5s")
    try:
        cifar_py_to_bin.convert(src, out)
    except (ValueError, pickle.UnpicklingError, EOFError) as e:
        raise Rejected(f"{src}: rewriting it as the binary version failed: {e}")
    lines.append("rewritten as the binary version by bench/cifar_py_to_bin.py")
    return lines


def prepare_bin(src, out, pub):
    lines = check_bin_dir(src, pub)
    os.makedirs(out, exist_ok=True)
    for name in BIN_FILES:
        os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(out, name))
    lines.append(f"linked from {src}")
    return lines


def prepare_archive(path, out, pub):
    got = md5_of(path)
    if got not in pub.archive_md5:
        raise Rejected(f"{path} has MD5 {got}, neither published archive's ({', '.join(pub.archive_md5)})")
    folder = pub.archive_md5[got]
    # Extracted beside `out`, so that links into it stay valid while `out` is used.
    into = out.rstrip("/") + "-archive"
    os.makedirs(into, exist_ok=True)
    with tarfile.open(path) as t:
        t.extractall(into, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(into)
    inner = os.path.join(into, folder)
    lines = [f"the archive has the published MD5 {got}; extracted into {into}"]
    lines += prepare_dir(inner, out, pub)
    return lines


def hf_split_files(d):
    """The Hugging Face data files in folder `d` and its subfolders, as (train, test) lists of
    paths in name order: `*.parquet` or `*.arrow` files whose path below `d` has `train` or `test`
    as a word (train-00000-of-00001.parquet, cifar10-test.arrow, test/0000.parquet)."""
    found = {"train": [], "test": []}
    for root, dirs, files in os.walk(d):
        if root != d:
            dirs[:] = []
        for f in files:
            if not f.endswith((".parquet", ".arrow")):
                continue
            rel = os.path.relpath(os.path.join(root, f), d).lower()
            for split in found:
                if re.search(rf"(?<![a-z]){split}(?![a-z])", rel):
                    found[split].append(os.path.join(root, f))
    return sorted(found["train"]), sorted(found["test"])


def read_hf_table(path):
    """One parquet or arrow file as a pyarrow Table (the `datasets` cache writes arrow streams)."""
    import pyarrow as pa
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        return pq.read_table(path)
    with pa.memory_map(path) as src:
        try:
            return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(src).read_all()


def hf_records(paths):
    """The binary version's records [N, 3073] of Hugging Face files whose `img` (or `image`) column
    holds each image's encoded bytes and whose `label` (or `labels`) column its class."""
    from PIL import Image
    records = []
    for path in paths:
        table = read_hf_table(path)
        img_col = next((c for c in ("img", "image") if c in table.column_names), None)
        lab_col = next((c for c in ("label", "labels") if c in table.column_names), None)
        if img_col is None or lab_col is None:
            raise Rejected(f"{path}: columns {table.column_names}, without img/image and label/labels")
        images = table.column(img_col).to_pylist()
        labels = np.asarray(table.column(lab_col).to_pylist(), dtype=np.int64)
        rec = np.empty((len(images), RECORD), dtype=np.uint8)
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise Rejected(f"{path}: labels outside 0..9")
        rec[:, 0] = labels
        for i, im in enumerate(images):
            data = im["bytes"] if isinstance(im, dict) else im
            if data is None and isinstance(im, dict) and im.get("path"):
                # An image kept as a file (the `datasets` cache may do this); a relative path is
                # taken from the table's folder.
                with open(os.path.join(os.path.dirname(os.path.abspath(path)), im["path"]), "rb") as f:
                    data = f.read()
            with Image.open(io.BytesIO(data)) as pic:
                if pic.format != "PNG":
                    raise Rejected(f"{path}: image {i} is {pic.format}, not PNG: not lossless")
                px = np.asarray(pic.convert("RGB"), dtype=np.uint8)
            if px.shape != (32, 32, 3):
                raise Rejected(f"{path}: image {i} is {px.shape}, not 32x32 RGB")
            rec[i, 1:] = px.transpose(2, 0, 1).reshape(-1)
        records.append(rec)
    return np.concatenate(records) if records else np.empty((0, RECORD), np.uint8)


def prepare_hf(src, out):
    train, test = hf_split_files(src)
    if not train or not test:
        raise Rejected(f"{src}: no Hugging Face train and test files (.parquet or .arrow) in it")
    try:
        import pyarrow  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as e:
        raise Rejected(f"{src}: Hugging Face files, but this Python cannot read them ({e}): pip install pyarrow pillow")
    tr, te = hf_records(train), hf_records(test)
    if len(tr) != 5 * IMAGES_PER_FILE or len(te) != IMAGES_PER_FILE:
        raise Rejected(f"{src}: {len(tr)} training and {len(te)} test images, not 50,000 and 10,000")
    os.makedirs(out, exist_ok=True)
    for k, name in enumerate(BIN_FILES[:5]):
        tr[k * IMAGES_PER_FILE:(k + 1) * IMAGES_PER_FILE].tofile(os.path.join(out, name))
    te.tofile(os.path.join(out, BIN_FILES[5]))
    names = ", ".join(os.path.relpath(p, src) for p in train + test)
    return [f"Hugging Face files decoded (PNG) and written as the binary version: {names}"]


def clear_out(out):
    """Remove the .bin entries a former run left in `out` (links into a source folder included:
    the rewrite must replace a link, not write through it into the files it points at)."""
    for name in BIN_FILES:
        dst = os.path.join(out, name)
        if os.path.lexists(dst):
            os.remove(dst)


def prepare_dir(path, out, pub):
    # (`out` holds no .bin entries here: `prepare` clears it before each candidate.)
    base = os.path.basename(os.path.normpath(path))
    if base == "cifar-10-batches-py":
        return prepare_py(path, out, pub)
    if base == "cifar-10-batches-bin":
        return prepare_bin(path, out, pub)
    if any(hf_split_files(path)):
        return prepare_hf(path, out)
    raise Rejected(f"{path}: not a cifar-10-batches-py or cifar-10-batches-bin folder, nor one of Hugging Face files")


def forget(out):
    """`out` as if nothing had been prepared in it: no .bin entries, no official-source.txt (a
    rejected candidate must not leave a former one's report, or its own half-written files, there)."""
    clear_out(out)
    report = os.path.join(out, "official-source.txt")
    if os.path.lexists(report):
        os.remove(report)


def prepare(candidates, out, pub=OFFICIAL):
    """The first candidate that passes, prepared in `out`: (candidate, check lines); or (None, reasons)
    with `out` holding no .bin files and no report."""
    forget(out)
    reasons = []
    for cand in candidates:
        try:
            if os.path.isdir(cand):
                lines = prepare_dir(cand, out, pub)
            elif os.path.isfile(cand) and cand.endswith(".tar.gz"):
                lines = prepare_archive(cand, out, pub)
            else:
                raise Rejected(f"{cand}: neither a folder nor a .tar.gz file")
            lines += [f"the result in {out}: " + line for line in check_bin_dir(out, pub)]
            return cand, lines
        except Rejected as e:
            reasons.append(str(e))
        except Exception as e:  # a file that cannot be read as it claims to be: the next candidate
            reasons.append(f"{cand}: {type(e).__name__}: {e}")
        forget(out)
    return None, reasons


def run(cands, out, pub=OFFICIAL):
    """`prepare`, its report printed and (on success) written to `out`/official-source.txt; the
    exit status: 0 when `out` is ready, 3 when no candidate passed."""
    cand, lines = prepare(cands, out, pub)
    if cand is None:
        print(f"official_cifar.py: no official CIFAR-10 among {len(cands)} candidate(s)")
        for line in lines:
            print(f"  rejected: {line}")
        return 3
    report = [f"official CIFAR-10 from {cand}"] + [f"  check: {line}" for line in lines]
    with open(os.path.join(out, "official-source.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


def read_candidates(list_path):
    """The paths of `on-gpu.sh stage`'s search list: every line but its `== ...` headings."""
    with open(list_path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("==")]


def write_pickles(folder, labels, data, names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels[name],
                         b"data": data[name], b"filenames": [b"x"] * len(labels[name])}, f)


def write_hf(folder, records, splits, fmt="PNG", arrow=False, as_files=False):
    """Records [N, 3073] as Hugging Face files in `folder`: {file name: (first, end) row range};
    parquet, or arrow: True for the stream format, "file" for the random-access one. With
    `as_files`, each image is a file of its own that the table names (no bytes in it), by its
    absolute path, or relative to `folder` when `as_files` is "relative"."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for name, (a, b) in splits.items():
        imgs = []
        for i, rec in enumerate(records[a:b]):
            buf = io.BytesIO()
            Image.fromarray(rec[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(buf, format=fmt)
            if as_files:
                rel = os.path.join("images", f"{name}-{i}.{fmt.lower()}")
                os.makedirs(os.path.join(folder, "images"), exist_ok=True)
                with open(os.path.join(folder, rel), "wb") as f:
                    f.write(buf.getvalue())
                imgs.append({"bytes": None, "path": rel if as_files == "relative" else os.path.join(folder, rel)})
            else:
                imgs.append({"bytes": buf.getvalue(), "path": None})
        table = pa.table({"img": imgs, "label": records[a:b, 0].astype(np.int64)})
        if arrow:
            new = pa.ipc.new_file if arrow == "file" else pa.ipc.new_stream
            with pa.OSFile(os.path.join(folder, name), "wb") as f, new(f, table.schema) as w:
                w.write_table(table)
        else:
            pq.write_table(table, os.path.join(folder, name))


def float_stats(data):
    """The `Published` statistics of made-up pickles' arrays {name: [10,000, 3072] uint8, channels
    first}, as the published ones were computed: the images as [N, 32, 32, 3] / 255 in float64,
    mean and std over all but the channel axis."""
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        x = np.concatenate([data[n] for n in names]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0
        out[f"{split}_mean"] = tuple(x.mean(axis=(0, 1, 2)))
        out[f"{split}_std"] = tuple(x.std(axis=(0, 1, 2)))
    return out


def selftest():
    """Made-up 10,000-image batches in every version, accepted and rejected for the right reasons."""
    rng = np.random.default_rng(0)
    names = list(OFFICIAL.py_md5)
    labels, data = {}, {}
    for name in names:
        lab = np.repeat(np.arange(10), 1000)
        rng.shuffle(lab)
        labels[name] = [int(v) for v in lab]
        data[name] = rng.integers(0, 256, size=(IMAGES_PER_FILE, 3072), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        py = os.path.join(tmp, "cache", "cifar-10-batches-py")
        write_pickles(py, labels, data, names)
        # What is "published" about these made-up files: their MD5s, order and pixel statistics,
        # the statistics computed here in floating point from the pickles' arrays (the way the
        # published ones were), apart from `pixel_stats`'s integer sums, which must agree.
        pub = Published(py_md5={name: md5_of(os.path.join(py, name)) for name in names}, archive_md5={},
                        first_labels=labels["data_batch_1"][:10], **float_stats(data))
        plain = os.path.join(tmp, "plain")
        cifar_py_to_bin.convert(py, plain)
        for split, files in (("train", BIN_FILES[:5]), ("test", BIN_FILES[5:])):
            mean, std = pixel_stats(plain, files)
            # Two float64 computations of the same sums: they agree to rounding (about 1e-15).
            assert np.abs(mean - getattr(pub, f"{split}_mean")).max() < 1e-12, (split, mean)
            assert np.abs(std - getattr(pub, f"{split}_std")).max() < 1e-12, (split, std)

        # The python version with the right MD5s: rewritten, and its records are the pickles'.
        out = os.path.join(tmp, "official")
        cand, lines = prepare([py], out, pub)
        assert cand == py, lines
        raw = np.fromfile(os.path.join(out, "test_batch.bin"), dtype=np.uint8).reshape(-1, RECORD)
        assert raw[:, 0].tolist() == labels["test_batch"] and (raw[:, 1:] == data["test_batch"]).all()
        assert any("published MD5s" in line for line in lines), lines
        assert any("official order" in line and "not in" not in line for line in lines), lines

        # The same folder against the real published MD5s: rejected (these are not the real files).
        cand, reasons = prepare([py], os.path.join(tmp, "o2"), dataclasses.replace(pub, py_md5=OFFICIAL.py_md5))
        assert cand is None and "not the published" in reasons[0], reasons
        # Against the real pixel statistics: rejected on them, after the MD5s passed.
        cand, reasons = prepare([py], os.path.join(tmp, "o2"), dataclasses.replace(
            pub, train_mean=OFFICIAL.train_mean, train_std=OFFICIAL.train_std))
        assert cand is None and "training pixels" in reasons[0] and "other pixels than the originals'" in reasons[0], reasons

        # The binary folder just written, passing the checks.
        binf = os.path.join(tmp, "x", "cifar-10-batches-bin")
        os.makedirs(binf)
        for name in BIN_FILES:
            rec = np.fromfile(os.path.join(out, name), dtype=np.uint8).reshape(-1, RECORD)
            rec.tofile(os.path.join(binf, name))
        cand, lines = prepare([binf], os.path.join(tmp, "o3"), pub)
        assert cand == binf, lines
        # o3 now holds links into binf; the python version prepared into o3 replaces the links
        # and leaves binf's files as they were.
        before = open(os.path.join(binf, "test_batch.bin"), "rb").read()
        other = {name: rng.integers(0, 256, size=(IMAGES_PER_FILE, 3072), dtype=np.uint8) for name in names}
        py2 = os.path.join(tmp, "cache2", "cifar-10-batches-py")
        write_pickles(py2, labels, other, names)
        pub2 = dataclasses.replace(pub, py_md5={name: md5_of(os.path.join(py2, name)) for name in names},
                                   **float_stats(other))
        cand, lines = prepare([py2], os.path.join(tmp, "o3"), pub2)
        assert cand == py2, lines
        assert open(os.path.join(binf, "test_batch.bin"), "rb").read() == before, "wrote through a link"
        assert not os.path.islink(os.path.join(tmp, "o3", "test_batch.bin"))

        # Records shuffled: still the same pixels, accepted, and the report says the order differs.
        rec = np.fromfile(os.path.join(binf, "data_batch_1.bin"), dtype=np.uint8).reshape(-1, RECORD)
        rng.permutation(rec).tofile(os.path.join(binf, "data_batch_1.bin"))
        cand, lines = prepare([binf], os.path.join(tmp, "o4"), pub)
        assert cand == binf and any("not in the official order" in line for line in lines), lines
        # The training images slightly blurred, as a lossy re-encoding does (each pixel value a
        # quarter its right-hand neighbour's, the last column kept): rejected on the statistics.
        # (Random ±1 noise would not do: on these uniform made-up pixels, clipped at 0 and 255,
        # it leaves the variance as it was.)
        for name in BIN_FILES[:5]:
            rec = np.fromfile(os.path.join(out, name), dtype=np.uint8).reshape(-1, RECORD)
            px = rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.int32)
            px[..., :-1] = (3 * px[..., :-1] + px[..., 1:] + 2) // 4
            rec[:, 1:] = px.reshape(-1, 3072).astype(np.uint8)
            rec.tofile(os.path.join(binf, name))
        cand, reasons = prepare([binf], os.path.join(tmp, "o4"), pub)
        assert cand is None and "training pixels" in reasons[0] and "other pixels than the originals'" in reasons[0], reasons
        # The training pixels put back and one test image changed (its first pixel value): the
        # training statistics pass, the test statistics do not.
        for name in BIN_FILES[:5]:
            np.fromfile(os.path.join(out, name), dtype=np.uint8).tofile(os.path.join(binf, name))
        rec = np.fromfile(os.path.join(out, "test_batch.bin"), dtype=np.uint8).reshape(-1, RECORD)
        rec[0, 1] = (int(rec[0, 1]) + 128) % 256  # moves the red test mean by 128 / (255 * 10.24e6) = 4.9e-8
        rec.tofile(os.path.join(binf, "test_batch.bin"))
        cand, reasons = prepare([binf], os.path.join(tmp, "o4"), pub)
        assert cand is None and "the test pixels" in reasons[0], reasons
        # The test file put back and truncated: rejected on its size.
        np.fromfile(os.path.join(out, "test_batch.bin"), dtype=np.uint8).tofile(os.path.join(binf, "test_batch.bin"))
        with open(os.path.join(binf, "test_batch.bin"), "r+b") as f:
            f.truncate(RECORD * 9999)
        cand, reasons = prepare([binf], os.path.join(tmp, "o5"), pub)
        assert cand is None and "bytes, not" in reasons[0], reasons

        # An archive of the python version: accepted only with its MD5 among the published ones;
        # the candidates are tried in order, the rejected ones saying why.
        arch = os.path.join(tmp, "cifar-10-python.tar.gz")
        with tarfile.open(arch, "w:gz") as t:
            t.add(py, arcname="cifar-10-batches-py")
        cand, reasons = prepare([arch], os.path.join(tmp, "o6"), dataclasses.replace(pub, archive_md5=OFFICIAL.archive_md5))
        assert cand is None and "neither published archive" in reasons[0], reasons
        good = dataclasses.replace(pub, archive_md5={md5_of(arch): "cifar-10-batches-py"})
        cand, lines = prepare([os.path.join(tmp, "nothing"), binf, arch], os.path.join(tmp, "o7"), good)
        assert cand == arch, lines

        # What `main` writes: the report beside the files that passed; a later run whose candidates
        # are all rejected leaves the folder without the former files or report (nor its own).
        o = os.path.join(tmp, "o7")
        assert run([arch], o, good) == 0 and os.path.isfile(os.path.join(o, "official-source.txt"))
        assert run([binf], o, good) == 3
        left = sorted(os.listdir(o))
        assert left == [], left

        # Hugging Face's layouts: parquet files (the training split in two), the `datasets` cache's
        # arrow streams (the test images as files the table names, by absolute path), and arrow
        # files in the random-access format (the test images named by paths relative to the
        # table's folder); all decoded to the same records. JPEG images are rejected.
        try:
            import pyarrow  # noqa: F401
            import PIL  # noqa: F401
        except ImportError as e:
            print(f"selftest: the Hugging Face cases skipped ({e}: pip install pyarrow pillow)")
            print("selftest: ok")
            return
        train = np.concatenate([np.fromfile(os.path.join(out, n), dtype=np.uint8).reshape(-1, RECORD) for n in BIN_FILES[:5]])
        test = np.fromfile(os.path.join(out, "test_batch.bin"), dtype=np.uint8).reshape(-1, RECORD)
        hub = os.path.join(tmp, "hub", "datasets--uoft-cs--cifar10", "snapshots", "abc", "plain_text")
        write_hf(hub, train, {"train-00000-of-00002.parquet": (0, 25000), "train-00001-of-00002.parquet": (25000, 50000)})
        write_hf(hub, test, {"test-00000-of-00001.parquet": (0, 10000)})
        cache = os.path.join(tmp, "datasets", "uoft-cs___cifar10", "plain_text", "0.0.0", "f00")
        write_hf(cache, train, {"cifar10-train.arrow": (0, 50000)}, arrow=True)
        write_hf(cache, test, {"cifar10-test.arrow": (0, 10000)}, arrow=True, as_files=True)
        files = os.path.join(tmp, "arrowfile")
        write_hf(files, train, {"train.arrow": (0, 50000)}, arrow="file")
        write_hf(files, test, {"test.arrow": (0, 10000)}, arrow="file", as_files="relative")
        for folder in (hub, cache, files):
            o = os.path.join(tmp, "o8")
            cand, lines = prepare([folder], o, pub)
            assert cand == folder, lines
            for name in BIN_FILES:
                assert open(os.path.join(o, name), "rb").read() == open(os.path.join(out, name), "rb").read(), (folder, name)
        jpeg = os.path.join(tmp, "jpeg")
        write_hf(jpeg, train[:10], {"train-0.parquet": (0, 10)}, fmt="JPEG")
        write_hf(jpeg, test[:10], {"test-0.parquet": (0, 10)}, fmt="JPEG")
        cand, reasons = prepare([jpeg], os.path.join(tmp, "o9"), pub)
        assert cand is None and "not PNG" in reasons[0], reasons
    print("selftest: ok")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", help="file listing the paths to try, one per line (`== ...` lines skipped)")
    p.add_argument("--out", help="folder to write the six .bin files to")
    p.add_argument("--selftest", action="store_true")
    a = p.parse_args()
    if a.selftest:
        selftest()
        return 0
    if not (a.candidates and a.out):
        p.error("give --candidates LIST and --out DIR, or --selftest")
    return run(read_candidates(a.candidates), a.out)


if __name__ == "__main__":
    sys.exit(main())
