"""The bench's primary paired test: a crossed bootstrap over images and seeds
(cmat.metrics.paired_image_test). Its p-value and its 95% interval come from the same resamples
and agree exactly; it counts an image once; and it weighs seed-to-seed variation that a test
over images alone (the former sign test) ignored."""
import numpy as np
import pytest

from cmat.bench import ALPHA, _verdict
from cmat.metrics import mcnemar_exact, paired_image_test


def _random_pairs(rng, n, seeds, pa, pb, seed_shift=0.0):
    out = {}
    for i in range(n):
        out[i] = {s: (bool(rng.random() < pa + seed_shift * (s - (seeds - 1) / 2)), bool(rng.random() < pb))
                  for s in range(seeds)}
    return out


def test_p_below_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(0)
    hits = {True: 0, False: 0}
    for trial in range(120):  # effects around the edge of significance, 1 to 3 seeds
        seeds = 1 + trial % 3
        t = paired_image_test(_random_pairs(rng, 150, seeds, 0.8 + rng.uniform(-0.05, 0.08), 0.8),
                              n_boot=2000, seed=trial)
        lo, hi = t["ci95_diff"]
        significant = t["p"] < ALPHA
        assert significant == (not lo <= 0 <= hi), t
        assert lo <= t["mean_diff"] <= hi
        hits[significant] += 1
    assert min(hits.values()) >= 10  # both verdicts were exercised


def test_an_image_counts_once_and_identical_seeds_add_nothing():
    rng = np.random.default_rng(1)
    a, b = rng.random(300) < 0.9, rng.random(300) < 0.8
    one = paired_image_test({i: [(a[i], b[i])] for i in range(300)})
    two = paired_image_test({i: {0: (a[i], b[i]), 1: (a[i], b[i])} for i in range(300)})
    mc = mcnemar_exact(a, b)
    assert (one["a_better"], one["b_better"], one["n_images"]) == (mc["a_only"], mc["b_only"], 300)
    assert two["n_images"] == 300 and two["n_seeds"] == 2 and two["mean_diff"] == one["mean_diff"]
    assert one["mean_diff"] == pytest.approx(a.mean() - b.mean())
    # two copies of one seed are one seed's evidence: the interval does not shrink
    assert two["ci95_diff"] == pytest.approx(one["ci95_diff"], abs=0.01)
    assert two["p"] == pytest.approx(one["p"], abs=0.02)
    pooled = mcnemar_exact(np.concatenate([a, a]), np.concatenate([b, b]))
    assert pooled["p"] < one["p"] / 2  # pooling seeds as independent images overstates significance


def test_seed_to_seed_variation_widens_the_interval():
    """Seeds that disagree (a much better in one, much worse in another): images alone (every
    seed's outcomes averaged first, the former design) call it significant; the crossed
    bootstrap, whose unit is still the image, weighs the seeds' spread and does not."""
    n = 400  # seed 0: a right everywhere, b wrong on 100 images; seed 1: both right; seed 2: a wrong on 60
    pairs = {i: {0: (True, i >= 100), 1: (True, True), 2: (not 100 <= i < 160, True)} for i in range(n)}
    crossed = paired_image_test(pairs)
    per_image = np.array([np.mean([a - b for a, b in v.values()]) for v in pairs.values()])
    boot = per_image[np.random.default_rng(0).integers(0, n, size=(10000, n))].mean(1)
    images_only = np.percentile(boot, [2.5, 97.5])
    assert images_only[0] > 0  # over images alone: "a significantly better"
    lo, hi = crossed["ci95_diff"]
    assert lo <= 0 <= hi and crossed["p"] >= ALPHA
    assert hi - lo > 2 * (images_only[1] - images_only[0])


def test_the_verdict_cell_names_disagreement():
    agree = {"p": 0.3, "mean_diff": -0.01, "ci95_diff": [-0.04, 0.01]}
    per_seed = {"0": {"p": 0.26}, "1": {"p": 0.66}, "2": {"p": 0.0026}}
    text = _verdict(agree, per_seed, "cmat")
    assert text.startswith("no;") and "s2" in text and "disagree" in text
    assert _verdict({"p": 0.001, "mean_diff": 0.05, "ci95_diff": [0.02, 0.08]},
                    {"0": {"p": 0.01}, "1": {"p": 0.02}}, "cmat") == "yes (cmat better)"
    broken = _verdict({"p": 0.08, "mean_diff": -0.016, "ci95_diff": [-0.031, -0.001]}, per_seed, "cmat")
    assert "undecided" in broken  # the old ANP-VS row (sign test p 0.08, CI excluding 0) cannot pass silently


def test_the_committed_three_seed_bench_renders_a_whole_paired_table():
    """With several seeds the description and the header row both appear (a conditional once
    swallowed the header and glued the first row to the description)."""
    from pathlib import Path

    from cmat.report import render_report

    md = render_report(Path(__file__).resolve().parents[1] / "docs" / "results" / "digits-5split")
    assert "no correction for comparing 7 methods" in md
    assert "reference.\nThe difference" not in md and "\n\n| method | images | seeds |" in md
