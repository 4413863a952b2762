"""CMAT (compact–pick–grow + AT) and PackNet on toy-2task: exact zero forgetting, picking,
released capacity, goals (growth and resume: tests/test_cpg_growth_resume.py)."""

import pytest
import torch

from cmat.cpg import CMAT
from cmat.baselines.packnet import PackNet
from tests.helpers import CMAT_OPTS, run_quick, trained_first_task



@pytest.fixture(scope="module")
def cmat_run(default_toy_run):
    """CMAT as ``cmat run --tasks toy-2task`` trains it (the session's golden run, conftest)."""
    return default_toy_run


@pytest.fixture(scope="module")
def packnet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("packnet")
    return out, run_quick(out, method="packnet", epochs=2, method_options={"retrain_epochs": 1})


@pytest.mark.parametrize("which", ["cmat_run", "packnet_run"])
def test_zero_forgetting_is_exact(which, request):
    _, res = request.getfixturevalue(which)
    for name, mat in res["acc"].items():
        assert mat[1][0] == mat[0][0], name  # bit for bit, clean and seeded attacks
        assert res["summary"][name]["forgetting"] == 0.0
    assert res["summary"]["clean"]["acc"] > 0.8
    if which == "cmat_run":  # adversarially trained on the toy: robust too (measured 0.94)
        assert res["summary"]["pgd10"]["acc"] > 0.8




@pytest.mark.parametrize("method_cls,opts", [(PackNet, {"retrain_epochs": 1}), (CMAT, CMAT_OPTS)])
def test_old_effective_weights_unchanged_and_capacity_reused(method_cls, opts):
    method, trainer, seq = trained_first_task(method_cls, opts, epochs=1)  # bit-identity needs no accuracy
    net = method.net.eval()
    before = [m.effective_weight(1).clone() for m in net.masked_layers()]
    bn_before = {k: v.clone() for k, v in net.state_dict().items() if ".bns.1." in k or "heads.0" in k}
    released = [(m.owner == 0).clone() for m in net.masked_layers()]
    assert sum(int(r.sum()) for r in released) > 0  # pruning released capacity
    method.before_task(1, seq[1])
    method.train_task(1, seq[1], trainer)
    net.eval()
    for m, w, r in zip(net.masked_layers(), before, released):
        assert torch.equal(m.effective_weight(1), w)
        assert torch.all(m.owner[r] != 1)
    assert any(int((m.owner[r] == 2).sum()) > 0 for m, r in zip(net.masked_layers(), released))
    after = net.state_dict()
    for k, v in bn_before.items():
        assert torch.equal(after[k], v), k


def test_piggyback_picks_a_nontrivial_part(cmat_run):
    _, res = cmat_run
    rec = res["decisions"]["tasks"]
    assert rec[0]["picked_fraction"] is None
    assert 0.0 < rec[1]["picked_fraction"] < 1.0
    assert rec[0]["sparsity"] > 0


def test_goal_at_chance_is_flagged_and_the_task_trained_to_best_effort(monkeypatch, capsys):
    # an individual goal model at chance (4 classes: 0.25) must not set the bar for compaction
    monkeypatch.setattr(CMAT, "_goal", lambda self, t, task, trainer: (0.25, None))
    method, trainer, seq = trained_first_task(CMAT, {**CMAT_OPTS, "goal": "individual", "prune_levels": 1}, epochs=1)
    rec = method.decisions["tasks"][0]
    assert rec["goal_reliable"] is False and rec["goal"] == 0.25
    assert rec["width"] == 1.5  # grew to the cap although the "goal" was met at once
    assert rec["compact_goal"] == rec["val_after_grow"] > 0.25 + 1 / 120
    assert "no better than chance" in capsys.readouterr().out
    # one image above chance + one validation image is a goal worth compacting towards
    assert method._goal_reliable(0.25 + 2 / 120, seq[0], trainer)


def test_growth_needs_a_shortfall_the_validation_images_resolve():
    method, trainer, seq = trained_first_task(CMAT, CMAT_OPTS, train=False)  # untrained: loses images
    metric, correct = method._validation(0, seq[0], trainer)
    assert correct.dtype == torch.bool and correct.float().mean().item() == metric
    wrong = (~correct).nonzero().squeeze(1)
    assert len(wrong) >= 6 and correct.sum() >= 2

    def goal_keeping(k):  # a goal model that keeps everything t's model keeps, and k images more
        g = correct.clone()
        g[wrong[:k]] = True
        return g.float().mean().item(), g

    tol, n = 0.02, len(correct)
    goal, g = goal_keeping(3)  # 3 images: missed by more than the tolerance, but p = 1/8
    assert goal - metric > tol
    tests = []
    assert not method._should_grow(goal, g, metric, correct, tol, tests)
    assert tests == [{"metric": metric, "goal_only": 3, "model_only": 0, "p": 0.125, "grow": False}]
    method.opts["grow_alpha"] = 1.0  # CPG's rule: any missed goal grows
    assert method._should_grow(goal, g, metric, correct, tol, [])
    method.opts["grow_alpha"] = 0.05
    goal, g = goal_keeping(6)  # p = 1/64
    assert method._should_grow(goal, g, metric, correct, tol, tests) and tests[-1]["p"] == 0.5 ** 6
    g[correct.nonzero().squeeze(1)[:2]] = False  # two images only t's model keeps: p = P[X >= 6 | 8]
    assert method._should_grow(goal - 2 / n, g, metric, correct, tol, tests) == (37 / 256 < 0.05)
    assert tests[-1]["p"] == pytest.approx(37 / 256)
    # met within the tolerance: no test at all; a numeric goal (no goal model): the goal test alone
    assert not method._should_grow(metric + tol / 2, g, metric, correct, tol, [])
    assert method._should_grow(metric + 2 * tol, None, metric, correct, tol, [])
