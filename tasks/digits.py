"""``digits-5split`` and ``digits-2split``: scikit-learn's bundled 8×8 handwritten digits (real
data, offline). ``digits-2split`` is the offline transfer pair: task 0 = digits 0–4, task 1 =
digits 5–9, with the same test split, validation split and threat model.

``sklearn.datasets.load_digits()`` ships 1797 images with values 0..16; they become uint8 by
``round(v * 255 / 16)`` (1×8×8, no augmentation -- a crop would remove a quarter of the digit).
The set has no official test split, so 20% of every digit is held out as the test set by a
stratified split with the *fixed* seed :data:`TEST_SEED` (the test set is the same for every
run seed, so results of different seeds are comparable); the validation part of each task is
then cut from the remaining 80% with the run seed. Task j = digits 2j, 2j+1. The data root
and ``download`` are ignored.
"""
from __future__ import annotations

import numpy as np

from cmat.tasks.base import stratified_split
from cmat.tasks.build import class_split_tasks

AUGMENT = None
TEST_FRACTION = 0.2
TEST_SEED = 0


def read_digits() -> tuple:
    """All 1797 digits as (uint8 images N×1×8×8, labels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


def load_digits_5split(root, download: bool, seed: int, val_fraction: float) -> list:
    images, labels = read_digits()
    train, test = stratified_split(labels, TEST_FRACTION, TEST_SEED)
    groups = [[2 * j, 2 * j + 1] for j in range(5)]
    return class_split_tasks(groups, [f"digits-{a}-{b}" for a, b in groups], [str(d) for d in range(10)],
                             (images[train], labels[train]), (images[test], labels[test]),
                             AUGMENT, seed, val_fraction)


def load_digits_2split(root, download: bool, seed: int, val_fraction: float) -> list:
    images, labels = read_digits()
    train, test = stratified_split(labels, TEST_FRACTION, TEST_SEED)
    groups = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    return class_split_tasks(groups, ["digits-0-4", "digits-5-9"], [str(d) for d in range(10)],
                             (images[train], labels[train]), (images[test], labels[test]),
                             AUGMENT, seed, val_fraction)
