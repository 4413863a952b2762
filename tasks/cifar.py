"""CIFAR-100 and CIFAR-10 sequences, read from torchvision's on-disk "python" pickles.

Files (relative to the data root, exactly what ``torchvision.datasets.CIFAR100/CIFAR10(root,
download=True)`` leaves there):
- ``cifar-100-python/{train,test,meta}``: dicts with ``data`` (uint8 N×3072: the R, G and B
  planes of a 32×32 image, row-major), ``fine_labels``, ``coarse_labels``; ``meta`` holds
  ``fine_label_names`` and ``coarse_label_names``.
- ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``: ``data``, ``labels``;
  ``batches.meta`` holds ``label_names``.

Local files are parsed here without an md5 check (tests write format-exact fakes); only
``download=True`` goes through torchvision, which verifies what it fetches. Training splits
carry the ``"crop-flip"`` augmentation.

Sequences:
- ``cifar100-20split``: one task per superclass, in alphabetical order of the superclass names;
  the fine classes of a superclass are read from the data's own ``coarse_labels``, labelled by
  ascending fine id.
- ``cifar100-10split``: task j = fine ids 10j..10j+9.
- ``cifar10-5split``: task j = classes 2j, 2j+1.
"""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np

from cmat.tasks.build import class_split_tasks, download_with, malformed_error, missing_data_error

AUGMENT = "crop-flip"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = tuple(f"{CIFAR100_DIR}/{n}" for n in ("train", "test", "meta"))
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = tuple(f"{CIFAR10_DIR}/{n}" for n in CIFAR10_TRAIN + ("test_batch", "batches.meta"))


def _ensure(root: Path, files, dataset: str, download: bool, fetch) -> None:
    """Raise the one-line missing-data error unless every file exists (after ``fetch`` if asked)."""
    missing = [root / f for f in files if not (root / f).is_file()]
    if missing and download:
        download_with(dataset, root, fetch)
        missing = [root / f for f in files if not (root / f).is_file()]
    if missing:
        raise missing_data_error(dataset, missing[0])


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: the containers, numbers and strings pickle builds itself, and
    numpy arrays (CIFAR's ``data``). Any other global — ``os.system``, ``builtins.eval``, a class
    — is refused, so a planted file under a shared data root cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (CIFAR files hold data only)")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(f, encoding="latin1").load()
    except Exception as err:  # truncated, not a pickle, a forbidden global, ...
        raise malformed_error(path, f"cannot unpickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise malformed_error(path, f"expected a dict, found {type(obj).__name__}")
    return obj


def _field(obj: dict, key: str, path: Path):
    if key not in obj:
        raise malformed_error(path, f"missing key {key!r}")
    return obj[key]


def _images(obj: dict, path: Path) -> np.ndarray:
    data = np.asarray(_field(obj, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise malformed_error(path, f"'data' must be uint8 N×3072, found {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def _labels(obj: dict, key: str, n: int, num_classes: int, path: Path) -> np.ndarray:
    try:
        labels = np.asarray(_field(obj, key, path), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise malformed_error(path, f"{key!r} is not a list of integers") from err
    if len(labels) != n:
        raise malformed_error(path, f"{key!r} has {len(labels)} entries for {n} images")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise malformed_error(path, f"{key!r} outside 0..{num_classes - 1}")
    return labels


def _names(obj: dict, key: str, count: int, path: Path) -> list:
    names = [str(s) for s in _field(obj, key, path)]
    if len(names) != count:
        raise malformed_error(path, f"{key!r} has {len(names)} names, expected {count}")
    return names


def read_cifar100(root: Path, download: bool = False) -> dict:
    """CIFAR-100 as arrays: ``train``/``test`` = (images uint8 N×3×32×32, fine, coarse) and the
    ``fine_names``/``coarse_names`` lists (in the meta file's order)."""
    def fetch():
        from torchvision.datasets import CIFAR100
        CIFAR100(str(root), train=True, download=True)

    _ensure(root, CIFAR100_FILES, "CIFAR-100", download, fetch)
    meta_path = root / CIFAR100_DIR / "meta"
    meta = _unpickle(meta_path)
    out = {"fine_names": _names(meta, "fine_label_names", 100, meta_path),
           "coarse_names": _names(meta, "coarse_label_names", 20, meta_path)}
    for split in ("train", "test"):
        path = root / CIFAR100_DIR / split
        obj = _unpickle(path)
        images = _images(obj, path)
        out[split] = (images, _labels(obj, "fine_labels", len(images), 100, path),
                      _labels(obj, "coarse_labels", len(images), 20, path))
    return out


def superclass_groups(fine: np.ndarray, coarse: np.ndarray, coarse_names: list, path: Path) -> list:
    """``[(superclass name, ascending fine ids)]`` in alphabetical order of the names, the
    grouping read from the (fine, coarse) label pairs of the data."""
    pairs = np.unique(fine * 100 + coarse)
    fines, coarses = pairs // 100, pairs % 100
    if len(np.unique(fines)) != len(fines):
        raise malformed_error(path, "a fine class appears under more than one coarse label")
    groups = [(coarse_names[c], sorted(int(f) for f in fines[coarses == c])) for c in range(len(coarse_names))]
    empty = [name for name, ids in groups if not ids]
    if empty:
        raise malformed_error(path, f"superclass {empty[0]!r} has no images")
    return sorted(groups, key=lambda g: g[0])


def load_cifar100_20split(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    d = read_cifar100(root, download)
    train_x, train_fine, train_coarse = d["train"]
    groups = superclass_groups(train_fine, train_coarse, d["coarse_names"], root / CIFAR100_DIR / "train")
    test_x, test_fine, _ = d["test"]
    return class_split_tasks([ids for _, ids in groups], [name for name, _ in groups], d["fine_names"],
                             (train_x, train_fine), (test_x, test_fine), AUGMENT, seed, val_fraction)


def load_cifar100_10split(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    d = read_cifar100(root, download)
    groups = [list(range(10 * j, 10 * j + 10)) for j in range(10)]
    names = [f"classes-{10 * j:02d}-{10 * j + 9:02d}" for j in range(10)]
    return class_split_tasks(groups, names, d["fine_names"], d["train"][:2], d["test"][:2],
                             AUGMENT, seed, val_fraction)


def read_cifar10(root: Path, download: bool = False) -> dict:
    """CIFAR-10 as arrays: ``train``/``test`` = (images uint8 N×3×32×32, labels), ``names``."""
    def fetch():
        from torchvision.datasets import CIFAR10
        CIFAR10(str(root), train=True, download=True)

    _ensure(root, CIFAR10_FILES, "CIFAR-10", download, fetch)
    base = root / CIFAR10_DIR
    meta = _unpickle(base / "batches.meta")
    out = {"names": _names(meta, "label_names", 10, base / "batches.meta")}
    for split, files in (("train", CIFAR10_TRAIN), ("test", ("test_batch",))):
        xs, ys = [], []
        for name in files:
            obj = _unpickle(base / name)
            xs.append(_images(obj, base / name))
            ys.append(_labels(obj, "labels", len(xs[-1]), 10, base / name))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def load_cifar10_5split(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    d = read_cifar10(root, download)
    groups = [[2 * j, 2 * j + 1] for j in range(5)]
    names = [f"{d['names'][a]}-{d['names'][b]}" for a, b in groups]
    return class_split_tasks(groups, names, d["names"], d["train"], d["test"], AUGMENT, seed, val_fraction)


def load_cifar10_cifar100(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    """A transfer pair: task 0 = CIFAR-10 (10 classes), task 1 = CIFAR-100 (100 fine classes)."""
    c10, c100 = read_cifar10(root, download), read_cifar100(root, download)
    source = class_split_tasks([list(range(10))], ["cifar10"], c10["names"], c10["train"], c10["test"],
                               AUGMENT, seed, val_fraction)
    target = class_split_tasks([list(range(100))], ["cifar100"], c100["fine_names"], c100["train"][:2],
                               c100["test"][:2], AUGMENT, seed, val_fraction)
    return source + [dataclasses.replace(target[0], index=1)]
