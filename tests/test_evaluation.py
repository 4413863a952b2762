"""The evaluation conventions: sound step sizes, per-image worst case, one denominator per
table, Wilson intervals, exact McNemar tests, AutoAttack against an analytic worst case."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from cmat.attacks import Attack, AutoAttack, make_attack, sound_alpha
from cmat.config import resolve
from cmat.errors import CmatError
from cmat.evaluate import build_attacks, evaluate_task
from cmat.metrics import mcnemar_exact, wilson_interval
from cmat.outcomes import read_outcomes


# ----------------------------------------------------------------------------- step sizes

def test_evaluation_pgd_steps_can_cross_the_ball():
    # MNIST's threat model: α = 0.01 alone moves PGD-10 0.1 < ε = 0.3
    assert make_attack("pgd10", 0.3, 0.01).alpha == pytest.approx(0.075)
    assert make_attack("pgd40", 0.3, 0.01).alpha == pytest.approx(0.01875)
    assert make_attack("pgd40", 0.3, 0.05).alpha == pytest.approx(0.05)  # a larger preset α is kept
    for k in (1, 3, 10, 40, 100):
        assert sound_alpha(0.3, 0.01, k) * k >= 2.5 * 0.3 - 1e-12
    assert make_attack("pgd10", 0.3, 0.01, alphas={"pgd10": 0.02}).alpha == 0.02  # the user's choice wins


def test_training_attack_that_cannot_reach_the_boundary_is_refused():
    with pytest.raises(CmatError, match="objective.steps ≥ 8"):
        resolve("mnist-5split", overrides={"objective": {"steps": 7}})  # 7 × 0.04 = 0.28 < ε = 0.3
    resolve("mnist-5split", overrides={"objective": {"steps": 8}})  # 8 × 0.04 = 0.32 ≥ ε: allowed
    with pytest.raises(CmatError, match="eval.alphas"):
        resolve("toy-2task", overrides={"eval": {"alphas": {"fgsm": 0.1}}})


# ----------------------------------------------------------------------------- worst case

class Pixel(nn.Module):
    """Label = 1 iff the first pixel > 0.5 (two logits)."""

    def forward(self, x):
        v = x.flatten(1)[:, :1] - 0.5
        return torch.cat([-v, v], 1)


class Breaks(Attack):
    """A fake attack that pushes the images whose index (stored in pixel 1) is in ``who`` across
    the decision boundary and leaves the others alone."""

    def __init__(self, who):
        self.who = set(who)

    def __call__(self, model, x, y, generator=None):
        x = x.clone()
        for i in range(len(x)):
            if int(round(float(x[i, 0, 0, 1]) * 100)) in self.who:
                x[i, 0, 0, 0] = 1.0 - x[i, 0, 0, 0]
        return x


class Data:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def tensors(self, idx=None):
        return (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])


def pixel_data(n=40):
    x = torch.zeros(n, 1, 1, 2)
    x[:, 0, 0, 1] = torch.arange(n) / 100  # the image's own index
    y = (torch.arange(n) % 2)
    x[:, 0, 0, 0] = torch.where(y == 1, 0.8, 0.2)
    x[:4, 0, 0, 0] = 1 - x[:4, 0, 0, 0]  # images 0-3 are misclassified clean
    return Data(x, y)


def test_an_image_broken_by_any_attack_counts_as_broken():
    data = pixel_data()
    attacks = {"clean": None, "a": Breaks({2, 5, 6}), "b": Breaks({6, 7, 8})}
    res = evaluate_task(Pixel(), data, attacks, 2, seed=0, task=0)
    clean = res["clean"]["correct"]
    assert clean.sum() == 36 and not clean[:4].any()
    broken = {0, 1, 2, 3, 5, 6, 7, 8}  # wrong clean (0-3; 2 also "attacked") or broken by a or b
    assert set(np.flatnonzero(~res["worst"]["correct"])) == broken
    assert res["worst"]["acc"] == pytest.approx(32 / 40)
    # each column: robust only where also correct clean, so robust ≤ clean per image
    for name in ("a", "b", "worst"):
        assert not (res[name]["correct"] & ~clean).any()
        assert res[name]["acc"] <= res["clean"]["acc"]
    assert res["a"]["acc"] == pytest.approx(34 / 40) and res["b"]["acc"] == pytest.approx(33 / 40)


def test_every_column_shares_one_denominator():
    data = pixel_data(100)
    attacks = {"clean": None, "a": Breaks(set(range(10, 100, 3)))}
    res = evaluate_task(Pixel(), data, attacks, 2, seed=3, task=1, samples=30)
    idx = res["clean"]["indices"]
    assert len(idx) == 30 and res["clean"]["n"] == res["a"]["n"] == res["worst"]["n"] == 30
    x, y = data.tensors()
    clean_on_subset = (Pixel()(x[idx]).argmax(1) == y[idx]).float().mean().item()
    assert res["clean"]["acc"] == pytest.approx(clean_on_subset)
    assert res["clean"]["n_full"] == 100 and res["clean"]["acc_full"] == pytest.approx(0.96)
    assert res["a"]["acc"] <= res["clean"]["acc"]


# ----------------------------------------------------------------------------- statistics

def test_wilson_interval_matches_hand_computation():
    # k = 8, n = 10, z = 1.96: centre (0.8 + z²/20)/(1 + z²/10), half-width as in the docstring
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi)


def test_exact_mcnemar_matches_hand_computation():
    # a right & b wrong on 1 image, a wrong & b right on 6: p = 2·P[Bin(7, ½) ≤ 1] = 2·8/128
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    t = mcnemar_exact(a, b)
    assert (t["n"], t["a_only"], t["b_only"]) == (10, 1, 6)
    assert t["p"] == pytest.approx(16 / 128)
    assert mcnemar_exact(a, a)["p"] == 1.0
    assert mcnemar_exact(np.ones(5, bool), np.zeros(5, bool))["p"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError):
        mcnemar_exact(a, b[:5])


# ----------------------------------------------------------------------------- AutoAttack

def linear_pair(seed=0, d=16):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).eval()
    x = torch.rand(200, 1, 4, 4)
    return model, x, model(x).argmax(1).detach()


def exact_robust(model, x, y, eps):
    """For a 2-class linear model the worst point of the ε-ball ∩ [0,1] is known: every pixel
    moves by up to ε against the margin, as far as the box allows."""
    w = (model[1].weight[1] - model[1].weight[0]).detach().view(1, -1)
    sign = torch.where(y == 1, -1.0, 1.0).view(-1, 1) * torch.sign(w)  # direction that helps the other class
    flat = x.flatten(1)
    worst = torch.where(sign > 0, (flat + eps).clamp(max=1), (flat - eps).clamp(min=0))
    return model(worst.view_as(x)).argmax(1) == y


@pytest.mark.parametrize("seed", [0, 1])
def test_autoattack_agrees_with_the_exact_worst_case_of_a_linear_model(seed):
    pytest.importorskip("torchattacks")
    model, x, y = linear_pair(seed)
    eps = 0.05
    aa = AutoAttack(eps, n_classes=2, n_queries=200)
    assert aa.components == ["apgd-ce", "fab-t", "square"]  # DLR-targeted needs 4 classes
    x_adv = aa(model, x, y, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= eps + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    survived = model(x_adv).argmax(1) == y
    assert torch.equal(survived, exact_robust(model, x, y, eps))
    again = aa(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, x_adv)


def test_autoattack_components_follow_the_head_size():
    assert AutoAttack(0.1, n_classes=4).components == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert build_attacks(["pgd10", "aa", "worst"], 0.1, 0.02, n_classes=3)["aa"].components == \
        ["apgd-ce", "fab-t", "square"]
    assert list(build_attacks(["pgd10", "worst"], 0.1, 0.02)) == ["clean", "pgd10"]


# ----------------------------------------------------------------------------- a run

def test_run_records_worst_intervals_and_per_image_outcomes(finetune_run):
    out, res = finetune_run
    outcomes = read_outcomes(out / "eval.h5")
    assert outcomes["task_names"] == res["task_names"]
    for name in res["acc"]:
        bits = outcomes["correct"][name]
        for j, b in enumerate(bits):
            assert b.mean() == pytest.approx(res["acc"][name][-1][j])
        k = int(sum(b.sum() for b in bits))
        assert res["summary"][name]["correct"] == k
        assert res["summary"][name]["ci95"] == pytest.approx(list(wilson_interval(k, sum(len(b) for b in bits))))
    for j in range(2):
        for name in res["acc"]:
            assert res["acc"]["worst"][-1][j] <= res["acc"][name][-1][j]
        worst = np.logical_and.reduce([outcomes["correct"][n][j] for n in res["acc"] if n != "worst"])
        assert np.array_equal(worst, outcomes["correct"]["worst"][j])
    assert res["attacks"]["pgd10"]["alpha"] == pytest.approx(sound_alpha(8 / 255, 2 / 255, 10))
    assert res["eval"]["n"] == [200, 200] and res["eval"]["n_test"] == [400, 400]
    assert len(res["clean_full"]["acc"][-1]) == 2
    json.dumps(res)  # everything in results.json is plain JSON


def test_fingerprint_sees_values_not_zero_signs():
    from cmat.evaluate import model_fingerprint

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight[0, 0] = 0.0
    ref = model_fingerprint(net)
    with torch.no_grad():
        net[0].weight[0, 0] = -0.0  # a masked-out weight of negative W: the same function
    assert model_fingerprint(net) == ref
    with torch.no_grad():
        net[2].bias[1] = torch.nextafter(net[2].bias[1], torch.tensor(1.0))  # one ulp is a change
    assert model_fingerprint(net) != ref


def test_certified_column_is_a_proof_below_worst_per_image(individual_run):
    """``certified`` in the harness: computed on the same images, never part of ``worst``, and
    every certified image survives every attack (a sound proof is never broken)."""
    import cmat
    from cmat.tasks import get_tasks

    out, _ = individual_run
    model = cmat.load(out).model(1)
    task = get_tasks("toy-2task", seed=0)[1]
    attacks = build_attacks(["clean", "pgd10", "pgd40", "certified"], 5e-5, 1.25e-5, task.num_classes)
    res = evaluate_task(model, task.test, attacks, task.num_classes, seed=0, task=1, samples=24)
    assert list(res)[-1] == "worst" and res["certified"]["n"] == res["worst"]["n"] == 24
    cert, worst = res["certified"]["correct"], res["worst"]["correct"]
    assert cert.any() and not (cert & ~worst).any()
    assert res["certified"]["acc"] <= res["worst"]["acc"]
    # worst is the same with and without the proof in the list
    plain = evaluate_task(model, task.test, build_attacks(["clean", "pgd10", "pgd40"], 5e-5, 1.25e-5),
                          task.num_classes, seed=0, task=1, samples=24)
    assert np.array_equal(plain["worst"]["correct"], worst)


def test_apgd_ce_with_restarts_is_an_attack_name_and_costs_its_restarts():
    from cmat.attacks.factory import check_attack_name, make_attack
    from cmat.attacks.factory import attack_passes

    atk = make_attack("apgd-ce-r5", 0.3, 0.04, n_classes=2)
    assert atk.restarts == 5 and atk.loss == "ce"
    assert attack_passes("apgd-ce-r5", 2) == 5 * attack_passes("apgd-ce", 2)
    for bad in ("apgd-ce-r0", "apgd-ce-r", "apgd-ce-r5x"):
        with pytest.raises(CmatError, match="apgd-ce-rR"):
            check_attack_name(bad)


def test_every_attack_name_is_a_bench_column_in_table_order_with_its_label():
    from cmat.attacks.factory import attack_label
    from cmat.bench import table_columns

    names = ["worst", "apgd-ce-r5", "pgd40-cw", "clean", "aa", "pgd10", "fgsm", "pgd40", "apgd-ce", "certified"]
    runs = [{"summary": {n: {} for n in names + ["not-an-attack"]}}, {"summary": {n: {} for n in names if n != "aa"}}]
    assert table_columns(runs) == ["clean", "fgsm", "pgd10", "pgd40", "pgd40-cw", "apgd-ce", "apgd-ce-r5",
                                   "worst", "certified"]  # only the columns every run has
    assert [attack_label(n) for n in ("pgd40-cw", "apgd-ce-r5", "pgd10", "apgd-t", "worst")] == [
        "PGD-40 (CW)", "APGD-CE ×5", "PGD-10", "APGD-T", "worst"]
