"""MNIST, Fashion-MNIST and EMNIST (balanced) sequences, read from torchvision's on-disk IDX files.

Files (relative to the data root, what ``torchvision.datasets.MNIST/FashionMNIST/EMNIST(root,
download=True)`` or ``cmat data fetch ROOT`` leave there; each may also be present
gzip-compressed as ``NAME.gz``):
- ``MNIST/raw/{train,t10k}-images-idx3-ubyte`` and ``...-labels-idx1-ubyte``;
- ``FashionMNIST/raw/`` the same four names;
- ``EMNIST/raw/emnist-balanced-{train,test}-images-idx3-ubyte`` and ``...-labels-idx1-ubyte``.

IDX: a big-endian header ``0 0 <type 0x08 = uint8> <ndim>``, ``ndim`` uint32 sizes, then the
bytes. Parsed here without checksums; ``download=True`` goes through torchvision.

EMNIST stores every image transposed relative to MNIST; the loader transposes it back, so an
EMNIST "7" looks like an MNIST "7" (a transfer source and target must agree on orientation).
Both are 1×28×28 and carry no augmentation (Madry's MNIST recipe; digits are not mirror
symmetric and a crop would move strokes off the 28×28 frame).

Sequences: ``mnist-5split`` (task j = digits 2j, 2j+1), ``fashion-5split`` (task j = classes
2j, 2j+1 of Fashion-MNIST: T-shirt/top-Trouser, Pullover-Dress, Coat-Sandal, Shirt-Sneaker,
Bag-Ankle boot) and ``emnist-balanced`` (one task,
47 classes: the digits, the 26 upper-case letters and the 11 lower-case letters
a b d e f g h n q r t that differ from their capitals).
"""
from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np

from cmat.tasks.build import class_split_tasks, download_with, malformed_error, missing_data_error

AUGMENT = None
MNIST_RAW = "MNIST/raw"
MNIST_FILES = tuple(f"{MNIST_RAW}/{s}-{k}" for s in ("train", "t10k")
                    for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
FASHION_RAW = "FashionMNIST/raw"
FASHION_FILES = tuple(f"{FASHION_RAW}/{s}-{k}" for s in ("train", "t10k")
                      for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]  # torchvision.datasets.FashionMNIST.classes
EMNIST_RAW = "EMNIST/raw"
EMNIST_FILES = tuple(f"{EMNIST_RAW}/emnist-balanced-{s}-{k}" for s in ("train", "test")
                     for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
EMNIST_BALANCED_CLASSES = [str(d) for d in range(10)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] \
    + list("abdefghnqrt")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (``path`` or ``path.gz``) as a numpy array of its shape."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise malformed_error(path, f"cannot read ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise malformed_error(path, "not an IDX file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise malformed_error(path, "truncated header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise malformed_error(path, f"{len(raw) - offset} data bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def locate_idx(root: Path, rel: str) -> Path:
    """``root/rel``, or its ``.gz`` twin if only that exists (``None`` if neither)."""
    plain = root / rel
    if plain.is_file():
        return plain
    gz = plain.with_name(plain.name + ".gz")
    return gz if gz.is_file() else None


def _read_split(root: Path, images_rel: str, labels_rel: str, num_classes: int):
    ipath, lpath = locate_idx(root, images_rel), locate_idx(root, labels_rel)
    images, labels = read_idx(ipath), read_idx(lpath)
    if images.ndim != 3:
        raise malformed_error(ipath, f"expected N×H×W images, found shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise malformed_error(lpath, f"expected {len(images)} labels, found shape {labels.shape}")
    if len(labels) and labels.max() >= num_classes:
        raise malformed_error(lpath, f"labels outside 0..{num_classes - 1}")
    return images[:, None], labels.astype(np.int64)


def _read(root: Path, files: tuple, dataset: str, num_classes: int, download: bool, fetch) -> dict:
    missing = [f for f in files if locate_idx(root, f) is None]
    if missing and download:
        download_with(dataset, root, fetch)
        missing = [f for f in files if locate_idx(root, f) is None]
    if missing:
        raise missing_data_error(dataset, root / missing[0])
    return {"train": _read_split(root, files[0], files[1], num_classes),
            "test": _read_split(root, files[2], files[3], num_classes)}


def read_mnist(root: Path, download: bool = False) -> dict:
    """MNIST as ``train``/``test`` = (images uint8 N×1×28×28, labels)."""
    def fetch():
        from torchvision.datasets import MNIST
        MNIST(str(root), train=True, download=True)

    return _read(root, MNIST_FILES, "MNIST", 10, download, fetch)


def read_fashion_mnist(root: Path, download: bool = False) -> dict:
    """Fashion-MNIST as ``train``/``test`` = (images uint8 N×1×28×28, labels)."""
    def fetch():
        from torchvision.datasets import FashionMNIST
        FashionMNIST(str(root), train=True, download=True)

    return _read(root, FASHION_FILES, "Fashion-MNIST", 10, download, fetch)


def read_emnist_balanced(root: Path, download: bool = False) -> dict:
    """EMNIST balanced as ``train``/``test`` = (images uint8 N×1×28×28 in MNIST orientation,
    labels 0..46)."""
    def fetch():
        from torchvision.datasets import EMNIST
        EMNIST(str(root), split="balanced", train=True, download=True)

    d = _read(root, EMNIST_FILES, "EMNIST", 47, download, fetch)
    return {split: (np.ascontiguousarray(x.transpose(0, 1, 3, 2)), y) for split, (x, y) in d.items()}


def load_mnist_5split(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    d = read_mnist(root, download)
    groups = [[2 * j, 2 * j + 1] for j in range(5)]
    return class_split_tasks(groups, [f"mnist-{a}-{b}" for a, b in groups], [str(d) for d in range(10)],
                             d["train"], d["test"], AUGMENT, seed, val_fraction)


def load_fashion_5split(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    d = read_fashion_mnist(root, download)
    groups = [[2 * j, 2 * j + 1] for j in range(5)]
    return class_split_tasks(groups, [f"fashion-{a}-{b}" for a, b in groups], FASHION_CLASSES,
                             d["train"], d["test"], AUGMENT, seed, val_fraction)


def load_emnist_balanced(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    d = read_emnist_balanced(root, download)
    return class_split_tasks([list(range(47))], ["emnist-balanced"], EMNIST_BALANCED_CLASSES,
                             d["train"], d["test"], AUGMENT, seed, val_fraction)


def load_mnist_emnist(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    """A transfer pair: task 0 = MNIST (10 digits), task 1 = EMNIST balanced (47 classes, MNIST
    orientation)."""
    m, e = read_mnist(root, download), read_emnist_balanced(root, download)
    source = class_split_tasks([list(range(10))], ["mnist"], [str(d) for d in range(10)], m["train"], m["test"],
                               AUGMENT, seed, val_fraction)
    target = class_split_tasks([list(range(47))], ["emnist-balanced"], EMNIST_BALANCED_CLASSES, e["train"],
                               e["test"], AUGMENT, seed, val_fraction)
    return source + [dataclasses.replace(target[0], index=1)]
