"""Continual-learning metrics as pure functions of a lower-triangular accuracy matrix.

``acc[i][j]`` is the accuracy on task j after training task i (j ≤ i); T = number of rows.
- ACC = mean_j acc[T−1][j]
- BWT = mean_{j<T−1} (acc[T−1][j] − acc[j][j])            (Lopez-Paz & Ranzato 2017)
- forgetting = mean_{j<T−1} (max_{l<T−1} acc[l][j] − acc[T−1][j])   (Chaudhry et al. 2018;
  the max runs over rows l with j ≤ l < T−1)
With one task BWT and forgetting are 0 by definition.
"""
from __future__ import annotations

import numpy as np


def _check(acc) -> list:
    rows = [list(map(float, r)) for r in acc]
    for i, r in enumerate(rows):
        if len(r) != i + 1:
            raise ValueError(f"row {i} of the accuracy matrix has {len(r)} entries, expected {i + 1}")
    if not rows:
        raise ValueError("empty accuracy matrix")
    return rows


def average_accuracy(acc) -> float:
    rows = _check(acc)
    return float(np.mean(rows[-1]))


def backward_transfer(acc) -> float:
    rows = _check(acc)
    t = len(rows)
    if t == 1:
        return 0.0
    return float(np.mean([rows[-1][j] - rows[j][j] for j in range(t - 1)]))


def forgetting(acc) -> float:
    rows = _check(acc)
    t = len(rows)
    if t == 1:
        return 0.0
    return float(np.mean([max(rows[l][j] for l in range(j, t - 1)) - rows[-1][j] for j in range(t - 1)]))


def summarize(acc) -> dict:
    return {"acc": average_accuracy(acc), "bwt": backward_transfer(acc), "forgetting": forgetting(acc)}


def macro_f1(pred, target, num_classes: int) -> float:
    """Macro-averaged F1 over ``num_classes`` classes (a class absent from both counts 0)."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    conf = np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(conf).astype(float)
    denom = conf.sum(0) + conf.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())
