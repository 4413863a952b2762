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


def mcnemar_exact(a_correct, b_correct, alternative: str = "two-sided") -> dict:
    """Exact (binomial) McNemar test of paired outcomes on the same images.

    b = #(a right, b wrong), c = #(a wrong, b right); under H0 the discordant pairs split
    Binomial(b + c, 1/2), p = min(1, 2·P[X ≤ min(b, c)]) (two-sided), or p = P[X ≥ b]
    (``alternative="greater"``: a is better than b); p = 1 without discordant pairs.
    Returns ``{"n", "a_only", "b_only", "p"}``."""
    from scipy.stats import binom

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    m = only_a + only_b
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be two-sided or greater, got {alternative!r}")
    if m == 0:
        p = 1.0
    elif alternative == "greater":
        p = float(binom.sf(only_a - 1, m, 0.5))
    else:
        p = float(min(1.0, 2 * binom.cdf(min(only_a, only_b), m, 0.5)))
    return {"n": int(a.size), "a_only": only_a, "b_only": only_b, "p": p}


IMAGE_TEST = ("exact sign test over distinct test images of each image's fraction of seeds correct "
              "(reference minus method; ties dropped); 95% CI of the mean difference by a bootstrap over images")


def paired_image_test(pairs: dict, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of two methods whose unit is the test image, for any number of seeds.

    ``pairs`` maps an image key (e.g. ``(task, index)``) to the list of ``(a_correct,
    b_correct)`` outcomes of that image, one per seed that evaluated it. Per image,
    d = mean over its seeds of (a − b) ∈ [−1, 1]. The exact two-sided sign test counts images
    with d > 0 (``a_better``) and d < 0 (``b_better``): p = min(1, 2·P[X ≤ min]) with
    X ~ Binomial(a_better + b_better, 1/2). With one seed this is exactly :func:`mcnemar_exact`;
    repeating a seed changes nothing (an image is counted once, however many seeds saw it).
    ``mean_diff`` = mean of d over images (the accuracy difference a − b) with a percentile
    bootstrap 95% interval (``n_boot`` resamples of images, both seeds of an image together)."""
    from scipy.stats import binom

    if not pairs:
        raise ValueError("paired_image_test needs at least one image")
    d = np.array([np.mean([float(a) - float(b) for a, b in outcomes]) for outcomes in pairs.values()])
    seeds = max(len(outcomes) for outcomes in pairs.values())
    a_better, b_better = int((d > 0).sum()), int((d < 0).sum())
    m = a_better + b_better
    p = 1.0 if m == 0 else float(min(1.0, 2 * binom.cdf(min(a_better, b_better), m, 0.5)))
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"test": IMAGE_TEST, "n_images": int(len(d)), "n_seeds": int(seeds), "a_better": a_better,
            "b_better": b_better, "ties": int(len(d) - m), "p": p, "mean_diff": float(d.mean()),
            "ci95_diff": [float(lo), float(hi)], "bootstrap": int(n_boot)}


def seed_spread(values) -> dict:
    """Mean and sample standard deviation (ddof 1) of per-seed values; ``std`` is None for one
    seed (a spread needs two)."""
    vals = np.asarray(values, dtype=float)
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else None, "n": int(len(vals))}
