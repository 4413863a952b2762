"""Certified training (IBP, CROWN-IBP): sound worst-case logits, the schedules, and certificates
that masks keep exactly (CMAT)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmat.objectives.certified import CertifiedObjective, CrownIBP, recorded_bn_stats, worst_case_logits
from cmat.config import ObjectiveConfig, ThreatConfig
from cmat.engine import Run
from cmat.bounds import network_ops
from cmat.bounds.ibp import input_box
from tests.helpers import quick_config
from tests.budgets import MILP_LIMITS
from tests.helpers import small_model


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_worst_case_logits_bound_every_sampled_point(beta):
    model = small_model()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    ops = network_ops(model)  # eval mode: running statistics
    for eps in (1e-6, 0.01, 0.05):
        with torch.no_grad():
            wl = worst_case_logits(ops, x, y, eps, beta)
            z = model(x)
        assert torch.all(wl.gather(1, y[:, None]) == 0)
        if eps == 1e-6:  # a vanishing ball: the margins themselves
            assert torch.allclose(wl, z - z.gather(1, y[:, None]), atol=0.05)
        lo, hi = input_box(x, torch.full((8,), eps))
        with torch.no_grad():
            for _ in range(50):
                out = model(lo + (hi - lo) * torch.rand_like(x))
                assert torch.all(out - out.gather(1, y[:, None]) <= wl + 1e-5)


def test_bound_pass_uses_the_batch_statistics_of_the_natural_pass():
    model = small_model()
    model.train()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(16, dtype=torch.long)
    with recorded_bn_stats(model) as stats:
        z = model(x)
    assert len(stats) == 4  # every BN layer of smallcnn
    ops = network_ops(model, live=stats)
    wl = worst_case_logits(ops, x, y, 1e-8, 0.0)
    assert torch.allclose(wl, z - z.gather(1, y[:, None]), atol=1e-2)  # the same function as training
    F.cross_entropy(wl, y).backward()  # differentiable through weights and BN affine parameters
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_schedules_warm_up_ramp_and_hold():
    cfg = ObjectiveConfig(name="crown-ibp", cert_warmup=0.2, cert_ramp=0.4, kappa_end=0.5, beta_end=0.0)
    obj = CrownIBP(cfg, ThreatConfig(eps=0.2, alpha=0.05))
    obj.total_iters = 100
    seen = []
    for i in range(100):
        obj.step = i
        seen.append(obj.schedule())
    assert all(s["eps"] == 0 and s["kappa"] == 1 and s["beta"] == 1 for s in seen[:21])
    assert seen[40]["eps"] == pytest.approx(0.1) and seen[40]["kappa"] == pytest.approx(0.75)
    assert all(s["eps"] == pytest.approx(0.2) and s["kappa"] == pytest.approx(0.5) and s["beta"] == pytest.approx(0)
               for s in seen[61:])
    assert all(a["eps"] <= b["eps"] for a, b in zip(seen, seen[1:]))
    ibp = CertifiedObjective(ObjectiveConfig(name="ibp"), ThreatConfig(eps=0.2, alpha=0.05))
    ibp.total_iters = 10
    assert ibp.schedule()["beta"] == 0.0


def test_cmat_keeps_certificates_exactly(tmp_path):
    """CMAT trained with CROWN-IBP: a certified image of task 1 is still certified after task 2
    (the masks freeze task 1's function, so its certificates are bit-identical)."""
    cfg = quick_config(method="cmat", objective="crown-ibp", epochs=2,
                       eval={"attacks": ["clean", "pgd10", "certified"], "samples": 40},
                       threat={"eps": 2 / 255, "alpha": 0.5 / 255},
                       method_options={"prune_levels": 1, "compact_epochs": 1})
    Run(cfg, tmp_path, progress=False, verbose=False).execute()
    res = json.loads((tmp_path / "results.json").read_text())
    cert = res["acc"]["certified"]
    assert cert[0][0] == cert[1][0]
    assert all(c <= w + 1e-12 for row_c, row_w in zip(cert, res["acc"]["worst"]) for c, w in zip(row_c, row_w))
    assert res["attacks"]["certified"]["bound"] == "crown"
    assert "certified" in res["summary"] and res["objective"] == "crown-ibp"
    assert res["cost"]["grad_evals"] > 0
    assert np.isfinite(res["summary"]["certified"]["acc"])
    from click.testing import CliRunner
    from cmat.cli import main

    out = CliRunner().invoke(main, ["verify", str(tmp_path), "--task", "0", "--n", "8", "--bound", "crown",
                                    "--at-eps", "--json"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)
    assert found["certified"] <= found["correct"] <= 8 and found["eps"] == cfg.threat.eps


def test_milp_verifies_the_certified_recipes_network_exactly():
    """cnn-ibp (strided conv, biases, no max-pool) through the MILP encoding: every check finishes,
    MILP's bound is at least CROWN's, and no PGD point has a smaller margin than MILP's bound."""
    from cmat.bounds import margin_lower_bound
    from cmat.nn.masked import MaskedMultiHeadNet
    from tests.helpers import pgd_margin

    torch.manual_seed(0)
    net = MaskedMultiHeadNet("cnn-ibp", 1, 8, width=0.25)
    net.add_task(0, 3, [0.3], [0.3], 1.0)
    model = net.eval().task_view(0)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    ops = network_ops(model)
    eps = torch.full((4,), 0.004)
    stats = {}
    milp = margin_lower_bound(ops, x, y, eps, "milp", stats=stats, **MILP_LIMITS)  # nodes, not seconds
    crown = margin_lower_bound(ops, x, y, eps, "crown")
    assert stats.get("unknown", 0) == 0
    assert torch.all(milp[torch.isfinite(milp)] >= crown[torch.isfinite(milp)] - 1e-5)
    assert torch.isfinite(milp).any()  # some images are certified: the comparison is not vacuous
    attacked = pgd_margin(model, x, y, (x - 0.004).clamp(min=0), (x + 0.004).clamp(max=1), 0.001, 20)
    assert torch.all(milp <= attacked + 1e-5)


@pytest.mark.parametrize("objective", ["crown-ibp", "trades"])
def test_anp_vs_refuses_objectives_its_loss_would_ignore(objective):
    from cmat.errors import CmatError
    from cmat.catalog import method_class
    from cmat.tasks import get_tasks

    cfg = quick_config(method="anp-vs", objective=objective)
    with pytest.raises(CmatError, match="anp-vs"):
        method_class("anp-vs")(cfg, get_tasks("toy-2task", seed=0), "cpu")


def test_a_warm_phase_trains_at_the_final_values_from_its_first_step():
    cfg = ObjectiveConfig(name="crown-ibp", cert_warmup=0.1, cert_ramp=0.5, kappa_end=0.5, beta_end=0.25)
    obj = CrownIBP(cfg, ThreatConfig(eps=0.2, alpha=0.05))
    obj.total_iters = 100
    obj.reset(warm=True)
    assert obj.schedule() == pytest.approx({"eps": 0.2, "kappa": 0.5, "beta": 0.25})
    obj.reset()
    assert obj.schedule() == {"eps": 0.0, "kappa": 1.0, "beta": 1.0}
    assert obj.certificate == "crown"  # the schedule ends on a CROWN-IBP mix: validate with CROWN
    assert CrownIBP(ObjectiveConfig(name="crown-ibp"), ThreatConfig()).certificate == "ibp"  # β → 0: pure IBP


def test_the_presets_certified_block_is_the_textbook_recipe_and_flags_override_it():
    from cmat.config import CERTIFIED_OBJECTIVES, preset_names, resolve
    from cmat.objectives.base import OBJECTIVES

    assert sorted(CERTIFIED_OBJECTIVES) == sorted(n for n, c in OBJECTIVES.items() if c.certified)
    pgd = resolve("digits-5split")
    assert (pgd.model.arch, pgd.train.optimizer, pgd.train.lr, pgd.train.batch_size) == ("smallcnn", "sgd", 0.05, 64)
    for objective in CERTIFIED_OBJECTIVES:
        cert = resolve("digits-5split", overrides={"objective": {"name": objective}})
        assert (cert.model.arch, cert.train.optimizer, cert.train.lr,
                cert.train.batch_size) == ("cnn-ibp", "adam", 1e-3, 32)
        assert (cert.train.weight_decay, cert.objective.cert_warmup, cert.objective.cert_ramp,
                cert.objective.kappa_end) == (0.0, 0.1, 0.5, 0.5)
        assert "certified" in cert.eval.attacks and cert.threat.eps == 0.2  # same threat model
    mine = resolve("digits-5split", overrides={"objective": {"name": "ibp"}, "train": {"epochs": 7, "lr": 0.002}})
    assert (mine.train.epochs, mine.train.lr, mine.train.optimizer) == (7, 0.002, "adam")
    # every preset has a certified recipe: cnn-ibp (the published certified-MNIST network, also
    # for the mlp-trained mnist/fashion splits), or SHIELD's mlp on the 32x32 permuted/rotated MNIST
    shield = {"pmnist-10", "rmnist-10"}
    for name in preset_names():
        assert resolve(name, overrides={"objective": {"name": "ibp"}}).model.arch == (
            "mlp" if name in shield else "cnn-ibp"), name


def test_a_certificate_an_attack_refutes_is_a_loud_error():
    """evaluate_task checks every proof against every attack of the same evaluation: a 'bound'
    that proves everything, on a model PGD breaks, must stop the run (no number)."""
    from cmat.attacks import make_attack
    from cmat.errors import CmatError
    from cmat.evaluate import evaluate_task
    from cmat.tasks.base import ImageData

    class ProvesEverything:
        certifies = True

        def proven(self, model, x, y, device="cpu"):
            return torch.ones(len(x), dtype=torch.bool)

        def params(self):
            return {"attack": "certified", "eps": 0.3}

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)).eval()  # not robust at ε = 0.3
    images = (torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    with torch.no_grad():
        y = model(images.float() / 255).argmax(1)
    data = ImageData(images, y)
    attacks = {"clean": None, "pgd10": make_attack("pgd10", 0.3, 0.1), "certified": ProvesEverything()}
    with pytest.raises(CmatError, match="UNSOUND"):
        evaluate_task(model, data, attacks, 4, seed=0, task=0)
    attacks["certified"] = make_attack("certified", 0.3, 0.1)  # the real bound: no error, certified ≤ worst
    res = evaluate_task(model, data, attacks, 4, seed=0, task=0)
    assert not np.any(res["certified"]["correct"] & ~res["worst"]["correct"])
    assert res["worst"]["acc"] < 1.0  # PGD did break images: the check above was not vacuous
