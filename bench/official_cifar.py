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
- a `cifar-10-batches-bin` folder (the binary version, for which no per-file MD5 is published):
  the six files must have 10,000 records each, the first ten labels of data_batch_1.bin must be the
  official order's (6 9 9 4 1 1 2 7 8 3: frog, truck, truck, deer, automobile, ...), and every class
  must have 5,000 training and 1,000 test images. This rejects shuffled or rebuilt copies (such as
  ../shared/cifar10) but cannot tell the originals from their pixels re-encoded in the same order;
  the report says which kind of check a copy passed;
- a `cifar-10-*.tar.gz` archive: its MD5 must be one of the two published ones (python or binary
  version); it is extracted beside DIR and its folder tried as above.
The folder written is checked as a binary folder once more. DIR then holds the six `.bin` files
(copies, or links to a binary folder that passed) and `official-source.txt`, which says where they
came from and which checks they passed. Exit status: 0 when DIR is ready, 2 when no candidate
passed (each one's reason is printed), 1 on a usage error.

Only the standard library and numpy.
"""
import argparse
import hashlib
import os
import pickle
import sys
import tarfile
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar_py_to_bin  # noqa: E402  (the python -> binary rewrite, checked by its own --selftest)

RECORD = 1 + 3 * 32 * 32
IMAGES_PER_FILE = 10_000
BIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
# The published MD5s of the python version's pickles (https://www.cs.toronto.edu/~kriz/cifar.html
# publishes the archive's; torchvision's CIFAR10 class checks these per file).
PY_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# The archives' MD5s, as published on the CIFAR-10 page.
ARCHIVE_MD5 = {
    "c58f30108f718f92721af3b95e74349a": "cifar-10-batches-py",
    "c32a1d4ab5d03f1284b67883e8d87530": "cifar-10-batches-bin",
}
# The first ten labels of data_batch_1 in the official order. A copy whose records were shuffled
# (as ../shared/cifar10's were) or rebuilt from per-class image folders fails this.
FIRST_LABELS = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


class Rejected(Exception):
    """A candidate that is not (or not provably) the official files; the message says why."""


def md5_of(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_bin_dir(d, first_labels=FIRST_LABELS):
    """The checks a binary folder must pass; returns a line per check, raises Rejected."""
    lines = []
    counts = {"train": np.zeros(10, np.int64), "test": np.zeros(10, np.int64)}
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
        if name == "data_batch_1.bin" and labels[:10].tolist() != list(first_labels):
            raise Rejected(f"{path} starts with labels {labels[:10].tolist()}, not the official order's "
                           f"{list(first_labels)}: a shuffled or rebuilt copy")
        counts["test" if name == "test_batch.bin" else "train"] += np.bincount(labels, minlength=10)
    for split, want in (("train", 5000), ("test", 1000)):
        if not (counts[split] == want).all():
            raise Rejected(f"{d}: {split} images per class are {counts[split].tolist()}, not {want} each")
    lines.append("six files of 10,000 records each; labels within 0..9")
    lines.append(f"data_batch_1.bin starts with the official order's labels {list(first_labels)}")
    lines.append("5,000 training and 1,000 test images of every class")
    return lines


def prepare_py(src, out, py_md5):
    lines = []
    for name, want in py_md5.items():
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


def prepare_bin(src, out, first_labels):
    lines = check_bin_dir(src, first_labels)
    lines.append("(no MD5 is published for the binary version's files: the order and the counts are checked, not the pixels)")
    os.makedirs(out, exist_ok=True)
    for name in BIN_FILES:
        os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(out, name))
    lines.append(f"linked from {src}")
    return lines


def prepare_archive(path, out, archive_md5, py_md5, first_labels):
    got = md5_of(path)
    if got not in archive_md5:
        raise Rejected(f"{path} has MD5 {got}, neither published archive's ({', '.join(archive_md5)})")
    folder = archive_md5[got]
    # Extracted beside `out`, so that links into it stay valid while `out` is used.
    into = out.rstrip("/") + "-archive"
    os.makedirs(into, exist_ok=True)
    with tarfile.open(path) as t:
        t.extractall(into, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(into)
    inner = os.path.join(into, folder)
    lines = [f"the archive has the published MD5 {got}; extracted into {into}"]
    lines += prepare_dir(inner, out, py_md5, first_labels)
    return lines


def clear_out(out):
    """Remove the .bin entries a former run left in `out` (links into a source folder included:
    the rewrite must replace a link, not write through it into the files it points at)."""
    for name in BIN_FILES:
        dst = os.path.join(out, name)
        if os.path.lexists(dst):
            os.remove(dst)


def prepare_dir(path, out, py_md5, first_labels):
    clear_out(out)
    base = os.path.basename(os.path.normpath(path))
    if base == "cifar-10-batches-py":
        return prepare_py(path, out, py_md5)
    if base == "cifar-10-batches-bin":
        return prepare_bin(path, out, first_labels)
    raise Rejected(f"{path}: not a cifar-10-batches-py or cifar-10-batches-bin folder")


def prepare(candidates, out, archive_md5=ARCHIVE_MD5, py_md5=PY_MD5, first_labels=FIRST_LABELS):
    """The first candidate that passes, prepared in `out`: (candidate, check lines); or (None, reasons)."""
    reasons = []
    for cand in candidates:
        try:
            if os.path.isdir(cand):
                lines = prepare_dir(cand, out, py_md5, first_labels)
            elif os.path.isfile(cand) and cand.endswith(".tar.gz"):
                lines = prepare_archive(cand, out, archive_md5, py_md5, first_labels)
            else:
                raise Rejected(f"{cand}: neither a folder nor a .tar.gz file")
            lines += [f"the result in {out}: " + line for line in check_bin_dir(out, first_labels)]
            return cand, lines
        except Rejected as e:
            reasons.append(str(e))
        except OSError as e:
            reasons.append(f"{cand}: {e}")
    return None, reasons


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


def selftest():
    """Made-up 10,000-image batches in both versions, accepted and rejected for the right reasons."""
    rng = np.random.default_rng(0)
    names = list(PY_MD5)
    labels, data = {}, {}
    for name in names:
        lab = np.repeat(np.arange(10), 1000)
        rng.shuffle(lab)
        labels[name] = [int(v) for v in lab]
        data[name] = rng.integers(0, 256, size=(IMAGES_PER_FILE, 3072), dtype=np.uint8)
    first = labels["data_batch_1"][:10]
    with tempfile.TemporaryDirectory() as tmp:
        py = os.path.join(tmp, "cache", "cifar-10-batches-py")
        write_pickles(py, labels, data, names)
        md5s = {name: md5_of(os.path.join(py, name)) for name in names}

        # The python version with the right MD5s: rewritten, and its records are the pickles'.
        out = os.path.join(tmp, "official")
        cand, lines = prepare([py], out, {}, md5s, first)
        assert cand == py, lines
        raw = np.fromfile(os.path.join(out, "test_batch.bin"), dtype=np.uint8).reshape(-1, RECORD)
        assert raw[:, 0].tolist() == labels["test_batch"] and (raw[:, 1:] == data["test_batch"]).all()
        assert any("published MD5s" in line for line in lines), lines

        # The same folder against the real published MD5s: rejected (these are not the real files).
        cand, reasons = prepare([py], os.path.join(tmp, "o2"), {}, PY_MD5, first)
        assert cand is None and "not the published" in reasons[0], reasons

        # The binary folder just written, passing the checks, then shuffled: rejected on its order.
        binf = os.path.join(tmp, "x", "cifar-10-batches-bin")
        os.makedirs(binf)
        for name in BIN_FILES:
            rec = np.fromfile(os.path.join(out, name), dtype=np.uint8).reshape(-1, RECORD)
            rec.tofile(os.path.join(binf, name))
        cand, lines = prepare([binf], os.path.join(tmp, "o3"), {}, md5s, first)
        assert cand == binf, lines
        # o3 now holds links into binf; the python version prepared into o3 replaces the links
        # and leaves binf's files as they were.
        before = open(os.path.join(binf, "test_batch.bin"), "rb").read()
        other = {name: rng.integers(0, 256, size=(IMAGES_PER_FILE, 3072), dtype=np.uint8) for name in names}
        py2 = os.path.join(tmp, "cache2", "cifar-10-batches-py")
        write_pickles(py2, labels, other, names)
        md5s2 = {name: md5_of(os.path.join(py2, name)) for name in names}
        cand, lines = prepare([py2], os.path.join(tmp, "o3"), {}, md5s2, first)
        assert cand == py2, lines
        assert open(os.path.join(binf, "test_batch.bin"), "rb").read() == before, "wrote through a link"
        assert not os.path.islink(os.path.join(tmp, "o3", "test_batch.bin"))
        rec = np.fromfile(os.path.join(binf, "data_batch_1.bin"), dtype=np.uint8).reshape(-1, RECORD)
        rng.permutation(rec).tofile(os.path.join(binf, "data_batch_1.bin"))
        cand, reasons = prepare([binf], os.path.join(tmp, "o4"), {}, md5s, first)
        assert cand is None and "official order" in reasons[0], reasons
        # The order put back and the test file truncated: rejected on its size.
        np.fromfile(os.path.join(out, "data_batch_1.bin"), dtype=np.uint8).tofile(os.path.join(binf, "data_batch_1.bin"))
        with open(os.path.join(binf, "test_batch.bin"), "r+b") as f:
            f.truncate(RECORD * 9999)
        cand, reasons = prepare([binf], os.path.join(tmp, "o5"), {}, md5s, first)
        assert cand is None and "bytes, not" in reasons[0], reasons

        # An archive of the python version: accepted only with its MD5 among the published ones;
        # the candidates are tried in order, the rejected ones saying why.
        arch = os.path.join(tmp, "cifar-10-python.tar.gz")
        with tarfile.open(arch, "w:gz") as t:
            t.add(py, arcname="cifar-10-batches-py")
        cand, reasons = prepare([arch], os.path.join(tmp, "o6"), ARCHIVE_MD5, md5s, first)
        assert cand is None and "neither published archive" in reasons[0], reasons
        good = {md5_of(arch): "cifar-10-batches-py"}
        cand, lines = prepare([os.path.join(tmp, "nothing"), binf, arch], os.path.join(tmp, "o7"), good, md5s, first)
        assert cand == arch, lines
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
    cands = read_candidates(a.candidates)
    cand, lines = prepare(cands, a.out)
    if cand is None:
        print(f"official_cifar.py: no official CIFAR-10 among {len(cands)} candidate(s)")
        for line in lines:
            print(f"  rejected: {line}")
        return 2
    report = [f"official CIFAR-10 from {cand}"] + [f"  check: {line}" for line in lines]
    with open(os.path.join(a.out, "official-source.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
