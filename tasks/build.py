"""Helpers shared by the loaders: data-root resolution, user-facing errors, class subsets and
the assembly of one :class:`~tasks.base.Task` from uint8 arrays.

Contracts:
- :func:`make_task` splits a task's training images into train and validation with
  :func:`~tasks.base.stratified_split` (``val_fraction`` of every class, seeded by
  ``(seed, task index)`` so tasks get independent but repeatable splits) and computes the
  per-channel ``mean``/``std`` of the *train* part in [0, 1]. It never normalises images.
- Every error a user can cause (missing or malformed data) is a one-line
  :class:`~cmat.errors.CmatError` naming the path involved.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from cmat.errors import CmatError
from cmat.tasks.base import ImageData, Task, stratified_split

DEFAULT_DATA_ROOT = "./data"
DATA_ENV = "CMAT_DATA"


def resolve_data_root(data_root=None) -> Path:
    """The data root: the argument, else ``$CMAT_DATA``, else ``./data``."""
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT
    return Path(data_root).expanduser()


def one_line(text) -> str:
    """``text`` squeezed onto one line (error messages are shown as a single line)."""
    return " ".join(str(text).split())


def missing_data_error(dataset: str, path: Path) -> CmatError:
    """The error for a dataset absent under the data root (names the path and the flags)."""
    return CmatError(one_line(
        f"{dataset} not found: expected {os.path.abspath(path)}; pass --download to fetch it, or --data-root DIR "
        f"(or ${DATA_ENV}) to point at a directory that holds it"))


def malformed_error(path: Path, why) -> CmatError:
    """The error for a dataset file that exists but cannot be read as its format."""
    return CmatError(one_line(f"malformed dataset file {path}: {why}"))


def download_with(dataset: str, root: Path, fetch) -> None:
    """Run ``fetch()`` (a torchvision download, which md5-checks) and turn failures into one line."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as err:  # network, checksum or disk errors: all user-facing
        raise CmatError(one_line(f"downloading {dataset} into {root} failed: {err}")) from err


def task_seed(seed: int, index: int) -> int:
    """A 32-bit seed for task ``index``'s validation split, derived from the run seed."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def channel_stats(images: np.ndarray) -> tuple:
    """Per-channel mean and (population) std of uint8 images ``N×C×H×W`` scaled to [0, 1].

    Exact and memory-light: computed from per-channel histograms of the 256 byte values.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        plane = torch.from_numpy(np.ascontiguousarray(images[:, c])).view(-1)
        hist = torch.bincount(plane, minlength=256).numpy().astype(np.float64)  # uint8 in, no int64 copy
        n = max(hist.sum(), 1.0)
        mean = float(hist @ values / n)
        var = float(hist @ (values - mean) ** 2 / n)
        means.append(mean)
        stds.append(max(var ** 0.5, 1e-6))
    return tuple(means), tuple(stds)


def class_subset(images: np.ndarray, labels: np.ndarray, class_ids: Sequence[int]):
    """The images whose label is in ``class_ids``, relabelled ``class_ids[k] -> k``."""
    lut = np.full(int(max(labels.max(initial=0), max(class_ids))) + 1, -1, dtype=np.int64)
    lut[np.asarray(class_ids, dtype=np.int64)] = np.arange(len(class_ids))
    new = lut[labels]
    keep = np.flatnonzero(new >= 0)
    return images[keep], new[keep]


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))


def make_task(index: int, name: str, classes: Sequence[str], train_images: np.ndarray,
              train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
              augment: Optional[str], seed: int, val_fraction: float) -> Task:
    """One task from uint8 ``N×C×H×W`` arrays and labels in ``0..len(classes)-1``.

    The validation part (``val_fraction`` of each class, seeded) is cut from the training
    images; train keeps ``augment``, val and test have none.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    tr, va = stratified_split(train_labels, val_fraction, task_seed(seed, index))
    return make_task_from_splits(index, name, classes, (train_images[tr], train_labels[tr]),
                                 (train_images[va], train_labels[va]), (test_images, test_labels), augment)


def make_task_from_splits(index: int, name: str, classes: Sequence[str], train: tuple, val: tuple, test: tuple,
                          augment: Optional[str], stats: Optional[tuple] = None) -> Task:
    """One task from its three splits, each (uint8 ``N×C×H×W`` images, labels); ``mean``/``std``
    are ``stats`` if given (a caller that knows them: a pixel permutation keeps them), else the
    train split's; train keeps ``augment``, val and test have none."""
    mean, std = stats if stats is not None else channel_stats(train[0])

    def data(split, aug=None):
        return ImageData(_tensor(split[0]), torch.from_numpy(np.asarray(split[1], dtype=np.int64)), aug)

    return Task(index=index, name=name, classes=[str(c) for c in classes], train=data(train, augment),
                val=data(val), test=data(test), mean=mean, std=std)


def class_split_tasks(groups: Sequence[Sequence[int]], names: Sequence[str], class_names: Sequence[str],
                      train: tuple, test: tuple, augment: Optional[str], seed: int,
                      val_fraction: float) -> list:
    """Tasks from groups of class ids of one dataset (``train``/``test`` = (images, labels)).

    Task ``j`` holds the classes ``groups[j]`` (relabelled by their position in the group) and
    is called ``names[j]``; its class names are taken from ``class_names``.
    """
    tasks = []
    for j, (ids, name) in enumerate(zip(groups, names)):
        tr_x, tr_y = class_subset(*train, ids)
        te_x, te_y = class_subset(*test, ids)
        tasks.append(make_task(j, name, [class_names[i] for i in ids], tr_x, tr_y, te_x, te_y,
                               augment, seed, val_fraction))
    return tasks
