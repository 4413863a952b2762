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


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple:
    """95% Wilson score interval for k successes in n trials:
    (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n);  (0, 1) when n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def mcnemar_exact(a_correct, b_correct) -> dict:
    """Exact (binomial) McNemar test of paired outcomes on the same images.

    b = #(a right, b wrong), c = #(a wrong, b right); under H0 the discordant pairs split
    Binomial(b + c, 1/2), p = min(1, 2·P[X ≤ min(b, c)]) (two-sided); p = 1 without discordant
    pairs. Returns ``{"n", "a_only", "b_only", "p"}``."""
    from scipy.stats import binom

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    m = only_a + only_b
    p = 1.0 if m == 0 else float(min(1.0, 2 * binom.cdf(min(only_a, only_b), m, 0.5)))
    return {"n": int(a.size), "a_only": only_a, "b_only": only_b, "p": p}
