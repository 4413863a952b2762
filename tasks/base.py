"""Task and sequence containers shared by every loader.

A task-incremental *sequence* is a list of :class:`Task`; each task has its own label space
``0..C_j-1`` and its own head. Images are stored once as a ``uint8`` tensor ``N×C×H×W`` and
served as float tensors in ``[0, 1]`` -- normalisation is *not* applied here: each task exposes
``mean``/``std`` for the model's first layer (threat model: ε is measured in pixel units).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def augment_batch(x: torch.Tensor, kind: Optional[str], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Training augmentation applied to a float batch ``B×C×H×W`` in [0, 1].

    ``"crop-flip"``: random crop with 4-pixel zero padding, then a horizontal flip with
    probability 1/2 (the CIFAR recipe). ``"crop"``: the crop only (digits are not mirror
    symmetric). ``None``: identity. Randomness is drawn from ``generator`` (CPU) so a seeded run
    is repeatable. The result stays in [0, 1].
    """
    if kind is None or kind == "none":
        return x
    if kind not in ("crop-flip", "crop"):
        raise ValueError(f"unknown augmentation {kind!r}")
    b, _, h, w = x.shape
    pad = 4 if h >= 16 else 1
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if kind == "crop-flip":
        flip = torch.rand(b, generator=generator) < 0.5
        if flip.any():
            out[flip] = out[flip].flip(-1)
    return out


class ImageData(Dataset):
    """Images (uint8 ``N×C×H×W``) and labels (int64 ``N``) of one split of one task.

    ``data[i]`` is ``(float image in [0,1] of shape C×H×W, int label)``; the training split
    carries ``augment`` (applied per item in ``__getitem__`` and, faster, per batch by the
    engine through :func:`augment_batch`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: Optional[str] = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor N×C×H×W")
        if labels.shape[0] != images.shape[0]:
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.augment = augment

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255.0)
        if self.augment:
            x = augment_batch(x.unsqueeze(0), self.augment)[0]
        return x, int(self.labels[i])

    def tensors(self, indices=None):
        """All (or the indexed) images as float [0,1] and labels, without augmentation."""
        imgs = self.images if indices is None else self.images[indices]
        labs = self.labels if indices is None else self.labels[indices]
        return imgs.float().div_(255.0), labs


@dataclass
class Task:
    """One task of a sequence: three splits, class names and normalisation statistics."""

    index: int
    name: str
    classes: list
    train: ImageData
    val: ImageData
    test: ImageData
    mean: tuple
    std: tuple

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.test.images.shape[1:])


@dataclass
class TaskSequence(Sequence):
    """An ordered list of tasks plus the sequence's name (``seq[j]`` is task j)."""

    name: str
    tasks: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, j):
        return self.tasks[j]

    @property
    def task_names(self) -> list:
        return [t.name for t in self.tasks]


def stratified_split(labels: np.ndarray, fraction: float, seed: int):
    """Indices ``(train, val)``: ``fraction`` of each class goes to val, chosen with ``seed``.

    Each class contributes ``round(fraction * n_c)`` (at least 1 when it has ≥ 2 items).
    Both index arrays are sorted; they are disjoint and together cover ``range(len(labels))``.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if k == 0 and len(idx) >= 2 and fraction > 0:
            k = 1
        val.append(rng.permutation(idx)[:k])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val
