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
    return float(np.mean([max(rows[k][j] for k in range(j, t - 1)) - rows[-1][j] for j in range(t - 1)]))


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


IMAGE_TEST = ("crossed bootstrap over test images and seeds (each resample draws the distinct images and, "
              "independently, the seeds with replacement; statistic: mean over the drawn image × seed cells of "
              "reference minus method, correct = 1); two-sided p = 2·min(P*[Δ* ≤ 0], P*[Δ* ≥ 0]) and the 95% "
              "percentile interval from the same resamples, so p < 0.05 exactly when the interval excludes 0")


def _seed_cells(pairs: dict) -> tuple:
    """(d, present): images × seeds arrays of a − b and of "this seed evaluated this image"."""
    rows = [dict(enumerate(o)) if isinstance(o, (list, tuple)) else dict(o) for o in pairs.values()]
    seeds = sorted({s for r in rows for s in r}, key=str)
    col = {s: j for j, s in enumerate(seeds)}
    d = np.zeros((len(rows), len(seeds)))
    present = np.zeros_like(d)
    for i, r in enumerate(rows):
        for s, (a, b) in r.items():
            d[i, col[s]], present[i, col[s]] = float(a) - float(b), 1.0
    return d, present


def _two_sided(boot: np.ndarray, alpha: float = 0.05) -> tuple:
    """(p, lo, hi) from one bootstrap sample of Δ*: p = 2·min(#(Δ* ≤ 0), #(Δ* ≥ 0))/B (at most 1);
    lo = the smallest v with #(Δ* ≤ v) ≥ B·α/2, hi = the largest v with #(Δ* ≥ v) ≥ B·α/2. Then
    lo > 0 ⇔ #(Δ* ≤ 0) < B·α/2 and hi < 0 ⇔ #(Δ* ≥ 0) < B·α/2: p < α exactly when 0 ∉ [lo, hi]."""
    b = np.sort(boot)
    n = len(b)
    k = int(np.ceil(n * alpha / 2))  # order statistics k and n − k + 1 (1-based)
    lo, hi = b[k - 1], b[n - k]
    p = min(1.0, 2 * min(int((b <= 0).sum()), int((b >= 0).sum())) / n)
    return p, float(lo), float(hi)


def paired_image_test(pairs: dict, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of two methods: the test image is the unit and seeds are repeated
    measures of it, by a crossed (two-way) bootstrap (Owen 2007, "The pigeonhole bootstrap").

    ``pairs`` maps an image key (e.g. ``(task, index)``) to its outcomes per seed: a dict
    ``{seed: (a_correct, b_correct)}``, or a list (position = seed). The statistic is the accuracy
    difference Δ = mean over the evaluated (image, seed) cells of a − b. Each of ``n_boot``
    resamples draws the n distinct images with replacement and, independently, the k seeds with
    replacement, and recomputes Δ* over the cells drawn (an image drawn twice and a seed drawn
    twice count their cell four times; cells a seed did not evaluate are left out). The two-sided
    p-value and the 95% percentile interval come from the same Δ* (:func:`_two_sided`), so they
    never disagree. Resampling seeds adds the seed-to-seed variation (training randomness) to the
    image-to-image one; an image is never counted as several independent units.

    What it ignores: with k seeds the seed draw has only k^k outcomes (3 seeds: 27), so the
    seed part of the spread is coarse and, like any bootstrap, about (k − 1)/k of the true one;
    the crossed bootstrap counts the image × seed interaction twice, which makes it mildly
    conservative; no correction for comparing several methods against one reference. With one
    seed it is the bootstrap over images of the paired difference. ``a_better``/``b_better``
    count images a keeps in more of its seeds than b and the reverse (descriptive, not the test)."""
    if not pairs:
        raise ValueError("paired_image_test needs at least one image")
    d, present = _seed_cells(pairs)
    n, k = d.shape
    per_image = (d * present).sum(1) / np.maximum(present.sum(1), 1)
    rng = np.random.default_rng(seed)
    ci = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # image counts per resample
    cs = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(float)  # seed counts per resample
    num = np.einsum("bi,is,bs->b", ci, d * present, cs)
    den = np.einsum("bi,is,bs->b", ci, present, cs)
    boot = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    p, lo, hi = _two_sided(boot)
    return {"test": IMAGE_TEST, "n_images": int(n), "n_seeds": int(k), "a_better": int((per_image > 0).sum()),
            "b_better": int((per_image < 0).sum()), "ties": int((per_image == 0).sum()), "p": p,
            "mean_diff": float((d * present).sum() / present.sum()), "ci95_diff": [lo, hi], "bootstrap": int(n_boot)}


def seed_spread(values) -> dict:
    """Mean and sample standard deviation (ddof 1) of per-seed values; ``std`` is None for one
    seed (a spread needs two)."""
    vals = np.asarray(values, dtype=float)
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else None, "n": int(len(vals))}
