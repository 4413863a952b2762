"""The ``mlp`` backbone (SHIELD's target network): its shape, every method trains it, every store
reloads it, and every bound (IBP, CROWN, α-CROWN, MILP) is sound on it in each network family
(plain, masked, HAT-gated, ANP-VS-masked)."""
import json

import pytest
import torch
from torch import nn

import cmat
from cmat.bounds import margin_lower_bound, network_ops
from cmat.bounds.ibp import input_box
from cmat.bounds.ops import run_ops
from cmat.engine import Run
from cmat.evaluate import build_attacks, evaluate_task
from cmat.nn import MultiHeadNet
from cmat.nn.beta_bernoulli import BetaBernoulliMask
from cmat.nn.hat import HatNet
from cmat.nn.masked import MaskedMultiHeadNet
from cmat.tasks import tasks_for_config
from tests.budgets import MILP_LIMITS
from tests.helpers import quick_config
from tests.helpers import margins, pgd_margin

METHODS = ["cmat", "packnet", "supsup", "wsn", "hat", "at-individual", "anp-vs", "at-finetune"]


def test_mlp_is_1024_256_256_with_relu_and_width_scaling():
    net = MultiHeadNet("mlp", 1, 32, [10], [[0.1]], [[0.3]])
    linears = [m for m in net.features if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 256), (256, 256)]
    assert [type(m) for m in net.features] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert net.feature_dim == 256 and net.heads[0].in_features == 256
    half = MultiHeadNet("mlp", 1, 28, [10], [[0.1]], [[0.3]], width=0.5)
    assert [(m.in_features, m.out_features) for m in half.features if isinstance(m, nn.Linear)] == [(784, 128),
                                                                                                   (128, 128)]
    anp = MultiHeadNet("mlp", 1, 32, [10], [[0.1]], [[0.3]], norm_layer="beta-bernoulli")
    masks = [m for m in anp.features if isinstance(m, BetaBernoulliMask)]
    assert [m.log_a.numel() for m in masks] == [256, 256]  # one mask per hidden unit, before its ReLU
    anp.train()
    assert anp(torch.rand(4, 1, 32, 32)).shape == (4, 10)


@pytest.fixture(scope="module", params=METHODS)
def mlp_run(request, tmp_path_factory):
    name = request.param
    cfg = quick_config(method=name, epochs=1, model={"arch": "mlp", "width": 1.0},
                       train={"val_attack_samples": 16},
                       eval={"attacks": ["clean", "pgd10"], "samples": 40},
                       method_options={"prune_levels": 1, "compact_epochs": 1} if name == "cmat" else {})
    out = tmp_path_factory.mktemp(name)
    Run(cfg, out, progress=False, verbose=False).execute()
    return name, cfg, out, json.loads((out / "results.json").read_text())


def test_every_method_trains_the_mlp_and_its_store_reloads_to_the_reported_accuracies(mlp_run):
    name, cfg, out, res = mlp_run
    assert res["method"] == name and cfg.model.arch == "mlp"
    run = cmat.load(out)
    seq = tasks_for_config(cfg)
    for j in range(len(seq)):
        model = run.model(j).eval()
        kinds = {type(m) for m in model.modules()}
        assert nn.Conv2d not in kinds and not any("Conv" in k.__name__ for k in kinds)  # an mlp, rebuilt as one
        attacks = build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha, seq[j].num_classes)
        again = evaluate_task(model, seq[j].test, attacks, seq[j].num_classes, cfg.seed, j, cfg.eval.samples,
                              cfg.eval.batch_size, "cpu")
        assert again["clean"]["acc"] == pytest.approx(res["acc"]["clean"][-1][j], abs=0)
    assert res["summary"]["clean"]["acc"] > 0.5  # learned something in one epoch (chance: 0.25)


def test_every_methods_mlp_gets_a_sound_crown_bound(mlp_run):
    """The bound code reads each method's trained mlp (gates, masks, piggyback weights): the
    function it bounds is the model's, and its bound is below the PGD margin."""
    _, cfg, out, _ = mlp_run
    run = cmat.load(out)
    x, _ = tasks_for_config(cfg)[1].test.tensors(torch.arange(8))
    model = run.model(1).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    ops = network_ops(model)
    with torch.no_grad():
        assert torch.allclose(run_ops(ops, x), model(x), atol=1e-5)
    eps = torch.full((8,), 0.02)
    lb = margin_lower_bound(ops, x, y, eps, "crown")
    lo, hi = input_box(x, eps)
    assert torch.all(lb <= pgd_margin(model, x, y, lo, hi, 0.005, 20) + 1e-5)


def family_model(kind: str) -> nn.Module:
    """A small mlp (8×8 inputs, 16 hidden units) of each network family, with non-trivial state."""
    torch.manual_seed(0)
    if kind == "masked":  # task 1 uses task 0's remaining weights through its piggyback bits
        net = MaskedMultiHeadNet("mlp", 1, 8, width=0.0625)
        net.add_task(0, 3, [0.3], [0.3], 1.0)
        net.prune_owned(0, 0.3)
        net.add_task(1, 4, [0.3], [0.3], 1.5)
        for m in net.masked_layers():
            m.set_bits(2, torch.rand(m.weight.shape) < 0.5)
        return net.eval().task_view(1)
    if kind == "hat":  # finished gates: about half the units of each layer off
        net = HatNet("mlp", 1, 8, width=0.0625)
        net.add_task(0, 4, [0.3], [0.3])
        for g in net.gates():
            g.finish(0)
        assert any(not g.buffer(0).all() for g in net.gates())
        return net.eval().task_view(0)
    net = MultiHeadNet("mlp", 1, 8, [4], [[0.3]], [[0.3]], width=0.0625,
                       norm_layer="beta-bernoulli" if kind == "anp" else "batchnorm")
    if kind == "anp":  # a few units pruned (E[π] ≤ 1e-3), the others scaled
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, BetaBernoulliMask):
                    m.log_a[:5] = -8.0
                    m.log_b.uniform_(-1, 1)
    return net.eval().task_view(0)


def worst_found(model, x, y, eps, generator) -> torch.Tensor:
    """The smallest margin over uniform samples, box corners and a PGD point of B(x, ε) ∩ [0, 1]."""
    lo, hi = input_box(x, eps)
    worst = torch.full((len(x),), float("inf"))
    with torch.no_grad():
        for _ in range(100):
            worst = torch.min(worst, margins(model, lo + (hi - lo) * torch.rand(x.shape, generator=generator), y))
        corners = torch.where(torch.rand(x.shape, generator=generator) < 0.5, lo, hi)
        worst = torch.min(worst, margins(model, corners, y))
    return torch.min(worst, pgd_margin(model, x, y, lo, hi, float(eps[0]) / 4, 20))


@pytest.mark.parametrize("kind", ["plain", "masked", "hat", "anp"])
def test_every_bound_is_sound_on_the_mlp(kind):
    model = family_model(kind)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    ops = network_ops(model)
    with torch.no_grad():
        assert torch.allclose(run_ops(ops, x), model(x), atol=1e-5)
    g = torch.Generator().manual_seed(2)
    certified_somewhere = False
    for e in (0.002, 0.01):
        eps = torch.full((4,), e)
        bounds = {b: margin_lower_bound(ops, x, y, eps, b).detach() for b in ("ibp", "crown", "alpha-crown")}
        stats = {}
        bounds["milp"] = margin_lower_bound(ops, x, y, eps, "milp", stats=stats, **MILP_LIMITS)
        assert stats.get("unknown", 0) == 0
        worst = worst_found(model, x, y, eps, g)
        for name, lb in bounds.items():
            assert torch.all(lb <= worst + 1e-5), name  # sound: never above a margin found in the ball
        assert torch.all(bounds["crown"] >= bounds["ibp"] - 1e-5)
        assert torch.all(bounds["alpha-crown"] >= bounds["crown"] - 1e-5)
        done = torch.isfinite(bounds["milp"])  # MILP: -inf unless certified; exact where it certifies
        assert torch.all(bounds["milp"][done] >= bounds["alpha-crown"][done] - 1e-5)
        certified_somewhere |= bool(done.any())
        lo, hi = input_box(x, eps)
        for n, _, point in stats.get("points", []):  # MILP's minimisers: in the ball, margin ≈ its bound ≤ τ
            xp = torch.as_tensor(point, dtype=torch.float32).view(1, 1, 8, 8)
            assert torch.all(xp >= lo[n] - 1e-6) and torch.all(xp <= hi[n] + 1e-6)
            with torch.no_grad():
                assert float(margins(model, xp, y[n:n + 1])) <= 1e-3  # within the solver's gap of ≤ 0
    assert certified_somewhere  # the MILP comparison is not vacuous
