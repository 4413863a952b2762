"""Permuted and rotated MNIST: 10 tasks of all 10 digits, each task one fixed transform of the images.

The protocol of GPM (Saha et al. 2021), DGP and SHIELD (Krukowski et al. 2025): MNIST images
zero-padded by 2 pixels to 32×32 (1,024 inputs, what SHIELD's 1024-256-256 MLP takes), a
validation set of 5,000 training images (``val_fraction`` = 1/12 of the 60,000, the presets'
value; the same images in every task, stratified by digit, chosen with the run seed), the other 55,000
train, and each task tested on the whole 10,000-image test set under its transform.

- ``pmnist-10``: SHIELD's permutations of the 1,024 pixels of the padded image: task j's is the
  (j+1)-th ``permutation(1024)`` drawn from ``numpy.random.RandomState(1)`` (SHIELD's
  ``np.random.seed(1)`` then ten ``np.random.permutation(1024)``). Every task is permuted, the
  first included (task 0 is *not* plain MNIST). :func:`permutation` is that one place; a test
  pins a digest of the ten permutations.
- ``rmnist-10``: task j rotates the padded image by ``ROTATIONS[j]`` degrees counter-clockwise
  about its centre (nearest neighbour, corners filled with 0: torchvision's ``rotate``, applied as
  a gather, :func:`rotation_source`). The angles are SHIELD's: the first ten
  ``uniform(0, 360)`` draws of ``numpy.random.RandomState(10)``, unrounded. SHIELD rotates the
  PIL image; on 200 test images the gather equals PIL's rotation at every pixel for 9 of the 10
  angles and differs at 11 of 204,800 pixels for 228.1°.

The transforms are fixed by the sequence, not by the run seed: every run and every method sees
the same ten tasks. Images stay uint8; each task's mean/std are those of its train split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cmat.tasks.build import channel_stats, make_task_from_splits
from cmat.tasks.mnist import read_mnist

NUM_TASKS = 10
PAD = 2
SIDE = 28 + 2 * PAD
PERMUTATION_SEED = 1  # SHIELD's np.random.seed(1) for the ten permutations
ROTATION_SEED = 10  # SHIELD's np.random.seed(10) for the ten angles
ROTATIONS = tuple(float(a) for a in np.random.RandomState(ROTATION_SEED).uniform(0, 360, NUM_TASKS))
DIGITS = [str(d) for d in range(10)]


def permutation(task: int) -> np.ndarray:
    """Task ``task``'s pixel permutation of the padded 32×32 image (indices into its 1,024 pixels):
    the (task+1)-th permutation drawn from ``RandomState(PERMUTATION_SEED)``, as SHIELD draws them."""
    stream = np.random.RandomState(PERMUTATION_SEED)
    for _ in range(int(task)):
        stream.permutation(SIDE * SIDE)
    return stream.permutation(SIDE * SIDE)


def pad(images: np.ndarray) -> np.ndarray:
    """N×1×28×28 uint8 → N×1×32×32, zeros around."""
    return np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))


def permute(images: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Pixel ``i`` of the result is pixel ``source[i]`` of the input (flattened row-major), or 0
    where ``source[i]`` is -1."""
    n = len(images)
    flat = np.concatenate([images.reshape(n, -1), np.zeros((n, 1), dtype=images.dtype)], axis=1)
    return np.take(flat, source, axis=1).reshape(images.shape)  # -1 picks the zero column


def rotation_source(degrees: float, side: int = SIDE) -> np.ndarray:
    """The source pixel of every output pixel (-1: outside, filled with 0) of torchvision's
    nearest-neighbour rotation of a ``side``×``side`` image by ``degrees`` counter-clockwise:
    computed by rotating the image of pixel indices, so applying it with :func:`permute` gives
    exactly what ``torchvision.transforms.v2.functional.rotate`` gives, at the cost of a gather."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate as tv_rotate

    ids = torch.arange(1, side * side + 1, dtype=torch.float32).view(1, 1, side, side)
    out = tv_rotate(ids, float(degrees), interpolation=InterpolationMode.NEAREST, fill=0.0)
    return out.reshape(-1).round().to(torch.int64).numpy() - 1


def validation_indices(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Exactly ``round(val_fraction·N)`` training indices (sorted), stratified: each class gets its
    proportional share (largest remainders round it to the exact total), chosen with ``seed``."""
    k = int(round(float(val_fraction) * len(labels)))
    classes, counts = np.unique(labels, return_counts=True)
    quota = k * counts / len(labels)
    share = np.floor(quota).astype(np.int64)
    share[np.argsort(-(quota - share), kind="stable")[: k - int(share.sum())]] += 1
    rng = np.random.default_rng(int(seed))
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False) for c, n in zip(classes, share)]
    return np.sort(np.concatenate(picked))


def _tasks(root: Path, download: bool, seed: int, val_fraction: float, prefix: str, source, same_stats: bool) -> list:
    """The ten tasks; task j's images are ``permute(padded, source(j))``. ``same_stats``: the
    transform only reorders pixels (no fill), so every task's mean/std are the untransformed ones."""
    d = read_mnist(root, download)
    (tr_x, tr_y), (te_x, te_y) = d["train"], d["test"]
    tr_x, te_x = pad(tr_x), pad(te_x)
    va = validation_indices(tr_y, val_fraction, seed)
    keep = np.ones(len(tr_y), dtype=bool)
    keep[va] = False
    stats = channel_stats(tr_x[keep]) if same_stats else None
    tasks = []
    for j in range(NUM_TASKS):
        x, t = permute(tr_x, source(j)), permute(te_x, source(j))
        tasks.append(make_task_from_splits(j, f"{prefix}-{j}", DIGITS, (x[keep], tr_y[keep]), (x[va], tr_y[va]),
                                           (t, te_y), None, stats))
    return tasks


def load_pmnist_10(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    return _tasks(root, download, seed, val_fraction, "pmnist", permutation, True)


def load_rmnist_10(root: Path, download: bool, seed: int, val_fraction: float) -> list:
    return _tasks(root, download, seed, val_fraction, "rmnist", lambda j: rotation_source(ROTATIONS[j]), False)
