"""IBP and CROWN: sound (contain sampled and attacked points), CROWN never looser than IBP,
certified ε ≤ attack ε; unsupported layers refused with one line."""
import csv

import numpy as np

import pytest
import torch

from cmat.errors import CmatError
from cmat.nn import MultiHeadNet
from tests.budgets import MILP_LIMITS, MILP_NODES
from cmat.bounds import margin_lower_bound, network_ops, run_ops
from cmat.bounds.ibp import input_box
from cmat.verify import critical_eps, pgd_per_sample
from tests.helpers import margins, mlp, pgd_margin, small_model








@pytest.mark.parametrize("kind", ["plain", "masked", "anp"])
def test_bounds_contain_sampled_and_attacked_points(kind):
    model = small_model(kind)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    ops = network_ops(model)
    with torch.no_grad():
        assert torch.allclose(run_ops(ops, x), model(x), atol=1e-5)
    for e in (0.002, 0.02, 0.1):
        eps = torch.full((6,), e)
        with torch.no_grad():
            lb_ibp = margin_lower_bound(ops, x, y, eps, "ibp")
            lb_crown = margin_lower_bound(ops, x, y, eps, "crown")
        assert torch.all(lb_crown >= lb_ibp - 1e-6)  # never looser
        lo, hi = input_box(x, eps)
        g = torch.Generator().manual_seed(2)
        worst = torch.full((6,), float("inf"))
        with torch.no_grad():
            for _ in range(100):
                worst = torch.min(worst, margins(model, lo + (hi - lo) * torch.rand(x.shape, generator=g), y))
            corners = torch.where(torch.rand(x.shape, generator=g) < 0.5, lo, hi)
            worst = torch.min(worst, margins(model, corners, y))
        worst = torch.min(worst, pgd_margin(model, x, y, lo, hi, e / 4, 20))
        assert torch.all(lb_crown <= worst + 1e-5)
        assert torch.all(lb_ibp <= worst + 1e-5)


def test_crown_strictly_tighter_somewhere():
    model = small_model()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
        eps = torch.full((6,), 0.01)
        ops = network_ops(model)
        assert torch.all(margin_lower_bound(ops, x, y, eps, "crown") > margin_lower_bound(ops, x, y, eps, "ibp") + 1e-3)


@pytest.mark.parametrize("kind", ["plain", "masked"])
def test_skipping_crown_on_interval_exact_segments_changes_no_bound(kind, monkeypatch):
    """CROWN is skipped where interval arithmetic is already exact (one mixing affine map between
    ReLUs/MaxPools); refining there anyway must give the same bounds."""
    import cmat.bounds.crown as C
    from cmat.bounds.ops import ReLU

    model = small_model(kind)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
        ops = network_ops(model)
        assert any(C.interval_exact(ops[C.segment_start(ops, i):i]) for i, op in enumerate(ops)
                   if isinstance(op, ReLU))
        for e in (0.003, 0.02):
            eps = torch.full((5,), e)
            fast = margin_lower_bound(ops, x, y, eps, "crown")
            monkeypatch.setattr(C, "interval_exact", lambda segment: False)
            full = margin_lower_bound(ops, x, y, eps, "crown")
            monkeypatch.undo()
            assert torch.allclose(fast, full, atol=1e-5, rtol=1e-5)


def test_certified_eps_below_attack_eps_and_sound():
    model = small_model()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    res = critical_eps(model, x, y, eps_max=0.5, bound="crown", iters=10)
    cert, atk = res["certified"], res["attack"]
    assert torch.all(cert <= atk)
    assert torch.all(cert > 0)
    # no sampled or attacked point inside a certified ball changes the prediction
    lo, hi = input_box(x, cert)
    with torch.no_grad():
        for _ in range(50):
            assert torch.equal(model(lo + (hi - lo) * torch.rand_like(x)).argmax(1), y)
    assert not pgd_per_sample(model, x, y, cert, steps=20).any()


def test_unsupported_network_refused_with_the_layer_name():
    torch.manual_seed(0)
    net = MultiHeadNet("resnet18", 3, 8, [3], [[0.5] * 3], [[0.2] * 3], width=0.125)
    with pytest.raises(CmatError, match="BasicBlock") as err:
        network_ops(net.task_view(0))
    assert "\n" not in str(err.value)


def test_verify_command_writes_verona_csv(individual_run, tmp_path):
    from click.testing import CliRunner

    from cmat.cli import main

    out, _ = individual_run
    res = CliRunner().invoke(main, ["verify", str(out), "--task", "1", "--n", "6", "--iters", "5",
                                    "--max-neurons", "512", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "task1_crown.csv").open()))
    assert list(rows[0]) == ["network", "image_id", "original_label", "epsilon_value", "smallest_sat_value",
                             "total_time", "verifier"]
    for r in rows:
        assert float(r["epsilon_value"]) <= float(r["smallest_sat_value"])
    assert (tmp_path / "task1_crown_ecdf.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- alpha-CROWN and MILP



def test_alpha_crown_at_least_crown_at_least_ibp_and_sound():
    model = small_model()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    ops = network_ops(model)
    for e in (0.005, 0.03):
        eps = torch.full((6,), e)
        with torch.no_grad():
            lb = {m: margin_lower_bound(ops, x, y, eps, m) for m in ("ibp", "crown", "alpha-crown")}
        assert torch.all(lb["alpha-crown"] >= lb["crown"] - 1e-6) and torch.all(lb["crown"] >= lb["ibp"] - 1e-6)
        lo, hi = input_box(x, eps)
        with torch.no_grad():
            worst = torch.stack([margins(model, lo + (hi - lo) * torch.rand_like(x), y)
                                 for _ in range(200)]).min(0).values
        worst = torch.min(worst, pgd_margin(model, x, y, lo, hi, e / 8, 30))
        assert torch.all(lb["alpha-crown"] <= worst + 1e-5)
    assert torch.any(lb["alpha-crown"] > lb["crown"] + 1e-4)  # the optimisation does something


def test_milp_agrees_with_brute_force_enumeration_on_two_neurons():
    """2 inputs → 2 ReLUs → 2 outputs: the exact minimum margin over the box, by enumerating the
    four activation patterns (one LP each), equals the MILP's optimum."""
    from scipy.optimize import linprog

    from cmat.bounds.crown import crown_bounds
    from cmat.bounds.milp import encode, min_margin

    for seed in range(5):
        model = mlp((2, 2, 2), seed)
        x = torch.tensor([[[0.4, 0.6]]])
        eps = 0.3
        y = int(model(x).argmax(1))
        c = torch.zeros(2, dtype=torch.float64)
        c[y], c[1 - y] = 1, -1
        W1, b1 = model[1].weight.double().detach().numpy(), model[1].bias.double().detach().numpy()
        W2, b2 = model[3].weight.double().detach().numpy(), model[3].bias.double().detach().numpy()
        box = [(max(v - eps, 0), min(v + eps, 1)) for v in (0.4, 0.6)]
        best = float("inf")
        for pattern in ((0, 0), (0, 1), (1, 0), (1, 1)):
            s = np.diag(pattern).astype(float)
            obj = c.numpy() @ W2 @ s @ W1
            const = c.numpy() @ (W2 @ s @ b1 + b2)
            sign = np.array([-1.0 if p else 1.0 for p in pattern])  # active: W1 v + b1 ≥ 0
            res = linprog(obj, A_ub=sign[:, None] * W1, b_ub=-sign * b1, bounds=box, method="highs")
            if res.status == 0:
                best = min(best, res.fun + const)
        ops = network_ops(model)
        lo, hi = input_box(x, torch.tensor([eps]))
        problem = encode(ops, x[0], eps, crown_bounds(ops, lo, hi))
        value, _, _ = min_margin(problem, c.numpy(), None, MILP_NODES)
        assert value == pytest.approx(best, abs=1e-6)


def test_milp_is_exact_tightest_and_meets_the_attack():
    """On a small MLP: milp ≥ alpha-crown per sample (exact is tightest), and its certified ε
    lies within one bisection step of the ε where the exact margin reaches the tolerance."""
    model = mlp((4, 8, 8, 3), seed=1)
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    ops = network_ops(model)
    eps = torch.full((6,), 0.05)
    with torch.no_grad():
        exact = margin_lower_bound(ops, x, y, eps, "milp", **MILP_LIMITS)
        alpha = margin_lower_bound(ops, x, y, eps, "alpha-crown")
    finite = torch.isfinite(exact)
    assert torch.all(exact[finite] >= alpha[finite] - 1e-5)
    res = critical_eps(model, x, y, eps_max=1.0, bound="milp", iters=10, attack_steps=50, **MILP_LIMITS)
    step = 1.0 / 2 ** 10
    assert res["unknown"] == 0
    assert torch.all(res["certified"] <= res["attack"])
    # certified ε is within one bisection step of where the exact minimum margin reaches the
    # rounding tolerance τ (cmat.bounds.tolerance): between τ and 0 nothing is decided
    from cmat.bounds.tolerance import certification_tolerance
    beyond = res["certified"] + 2 * step
    with torch.no_grad():
        past = margin_lower_bound(ops, x, y, beyond, "milp", **MILP_LIMITS)
    assert torch.all((past <= certification_tolerance(ops, x, beyond)) | (beyond > 1.0))


def test_milp_refuses_maxpool_with_one_line():
    model = small_model()
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    with pytest.raises(CmatError, match="no MaxPool"):
        margin_lower_bound(network_ops(model), x, y, torch.full((1,), 0.01), "milp")


def test_refining_every_layer_is_never_looser_than_the_capped_crown():
    model = small_model()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = model(x).argmax(1)
        ops = network_ops(model)
        eps = torch.full((4,), 0.02)
        capped = margin_lower_bound(ops, x, y, eps, "crown", max_neurons=4)  # wide layers keep IBP
        full = margin_lower_bound(ops, x, y, eps, "crown")
        ibp_only = margin_lower_bound(ops, x, y, eps, "ibp")
    assert torch.all(full >= capped - 1e-6) and torch.all(capped >= ibp_only - 1e-6)
    assert torch.any(full > capped + 1e-4)
