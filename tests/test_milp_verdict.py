"""The MILP verdict (cmat/bounds/milp.py) rests on what the solver proves, not on what it found.

Each test names the defect it catches. Checked by patching each defect back into the module
(monkeypatched ``min_margin`` / ``widen``) and running this file: the old primal-value rule
fails the (a)/(b) test at logit scale 10⁻⁷ (a certified sample with a counterexample; at scale
1 only by rounding, its value being its minimiser's own margin) and both (c) cases; the dual
bound without the objective scaling fails (a)/(b) at logit scale 10⁻⁷ (a bound of 3.9·10⁻⁹
above a sampled margin of 1.9·10⁻⁹) and (c) for seed 0; no widening fails the widening test.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cmat.bounds import margin_lower_bound, network_ops
from cmat.bounds.crown import crown_bounds
from cmat.bounds.ibp import input_box
from cmat.bounds.milp import encode, float64_bounds, min_margin, widen
from cmat.bounds.ops import ReLU
from tests.budgets import MILP_LIMITS, MILP_NODES
from tests.helpers import mlp

EPS = (0.05, 0.1, 0.2, 0.3)


def rows(y: int, n_classes: int = 3) -> list:
    eye = np.eye(n_classes)
    return [eye[y] - eye[k] for k in range(n_classes) if k != y]


def min_row_margin(model64, pts: torch.Tensor, y: int) -> torch.Tensor:
    """min_k (f_y − f_k) per point, on the float64 network."""
    out = model64(pts.double())
    return (out[:, y:y + 1] - out).scatter(1, torch.full((len(pts), 1), y), float("inf")).min(1).values


def best_attack_margin(model64, x: torch.Tensor, y: int, eps: float) -> tuple:
    """(smallest margin found, its point): 2,000 uniform points and the 16 corners of the box, and a
    sign-gradient descent of the margin itself (scale-free, unlike cross-entropy on tiny logits)
    from 8 random starts."""
    lo, hi = input_box(x[None].double(), torch.tensor([eps], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    corners = torch.tensor([[(i >> b) & 1 for b in range(x.numel())] for i in range(2 ** x.numel())],
                           dtype=torch.float64).view(-1, *x.shape)
    pts = [lo + (hi - lo) * torch.rand((2000,) + tuple(x.shape), generator=g, dtype=torch.float64),
           lo + (hi - lo) * corners]
    xa = lo + (hi - lo) * torch.rand((8,) + tuple(x.shape), generator=g, dtype=torch.float64)
    for step in range(60):
        xa.requires_grad_(True)
        (gr,) = torch.autograd.grad(min_row_margin(model64, xa, y).sum(), xa)
        xa = torch.min(torch.max(xa.detach() - eps / 8 * 0.95 ** step * gr.sign(), lo), hi)
        pts.append(xa)
    pts = torch.cat(pts)
    with torch.no_grad():
        m = min_row_margin(model64, pts, y)
    i = int(m.argmin())
    return float(m[i]), pts[i]


def test_widened_float32_bounds_contain_the_float64_ones():
    """Big-M bounds must not be tighter than the truth: float32 CROWN bounds are tighter than
    the float64 ones for some neurons by rounding (asserted, so the check means something), and
    :func:`widen` moves every one of them outside. Fails if ``widen`` does not widen."""
    tighter = 0
    for seed in range(3):
        model = mlp((16, 32, 32, 3), seed)
        ops = network_ops(model)
        x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        for n in range(3):
            b32 = crown_bounds(ops, *input_box(x[n:n + 1], torch.tensor([0.1])))
            b64 = float64_bounds(ops, x[n], 0.1)
            for i, op in enumerate(ops):
                if not isinstance(op, ReLU):
                    continue
                l64, u64 = b64[i][0].flatten().numpy(), b64[i][1].flatten().numpy()
                tighter += int((b32[i][0].double().flatten().numpy() > l64).sum())
                wl, wu = widen(b32[i][0][0], b32[i][1][0])
                assert np.all(wl <= l64) and np.all(wu >= u64)
    assert tighter > 0


@pytest.mark.parametrize("logit_scale", [1.0, 1e-7])
def test_a_certified_ball_holds_no_counterexample_and_the_bound_is_below_every_margin(logit_scale):
    """(a) Soundness: where the MILP certifies a sample, dense sampling, the box's corners and a
    margin-descent attack find no point with margin ≤ 0, nor one the float32 model misclassifies.
    (b) Each row's reported bound is ≤ the margin of the solver's own minimiser on the float64
    network, and the sample's bound ≤ the smallest margin found.
    With logits scaled by 10⁻⁷ every margin sits inside HiGHS's absolute tolerances: its primal
    value (the old rule) and its unscaled dual bound both came out > 0 on samples with a real
    counterexample at margin ≈ −10⁻⁹ (9 of these 48 cases), so this fails without the
    objective scaling of ``min_margin`` or with the primal-value rule."""
    certified = refuted = 0
    for seed in range(3):
        model = mlp(seed=seed, logit_scale=logit_scale)
        model64 = copy.deepcopy(model).double()
        ops = network_ops(model)
        x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            y = model(x).argmax(1)
        for n in range(len(x)):
            for eps in EPS:
                with torch.no_grad():
                    lb = float(margin_lower_bound(ops, x[n:n + 1], y[n:n + 1], torch.tensor([eps]), "milp",
                                                  **MILP_LIMITS)[0])
                best, point = best_attack_margin(model64, x[n], int(y[n]), eps)
                assert lb <= best, (seed, n, eps, lb, best)
                if lb > 0:
                    certified += 1
                    assert best > 0
                    with torch.no_grad():
                        assert int(model(point[None].float()).argmax(1)) == int(y[n])
                refuted += best <= 0
                problem = encode(ops, x[n], eps, float64_bounds(ops, x[n], eps))
                lo_x, hi_x = problem["bounds"].lb[:problem["n_inputs"]], problem["bounds"].ub[:problem["n_inputs"]]
                for c in rows(int(y[n])):
                    value, _, sol = min_margin(problem, c, 10.0)
                    assert value is not None
                    pt = torch.from_numpy(np.clip(sol, lo_x, hi_x)).view(1, *x.shape[1:])
                    with torch.no_grad():
                        at_sol = float((model64(pt) @ torch.from_numpy(c))[0])
                    assert value <= at_sol, (seed, n, eps, value, at_sol)
    assert certified >= 10 and refuted >= 10  # both verdicts occur: the assertions above are not vacuous


def primal_margin(problem: dict, c: np.ndarray) -> float:
    """What the old rule certified on: HiGHS's primal value (the incumbent's margin)."""
    from scipy.optimize import milp

    obj = np.zeros(problem["n"])
    obj[problem["last"]] = c @ problem["W_out"]
    res = milp(obj, constraints=problem["constraints"], integrality=problem["integrality"], bounds=problem["bounds"])
    assert res.status == 0
    return float(res.fun + c @ problem["b_out"])


@pytest.mark.parametrize("seed, sample", [(0, 0), (1, 3)])
def test_a_margin_within_the_gap_of_zero_is_not_certified(seed, sample):
    """(c) ε is the row's critical ε, bisected to 2⁻⁴⁰ on the sign of the solver's primal value:
    at ``lo`` the primal value is > 0 (the old rule certifies: asserted), at ``hi`` ≤ 0, so the
    minimum at ``lo`` is within ~10⁻¹² of zero — inside the solver's gap. The verdict there must
    be "not certified": ``min_margin`` ≤ 0 and ``margin_lower_bound`` not > 0. (For seed 1,
    sample 3 HiGHS even reports a dual bound of −7.7·10⁻⁹ under a primal value of +7.6·10⁻¹⁴.)
    With the old primal-value rule both assertions fail."""
    model = mlp(seed=seed)
    ops = network_ops(model)
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(seed))[sample]
    with torch.no_grad():
        y = int(model(x[None]).argmax(1))

    def problem(eps):
        return encode(ops, x, eps, float64_bounds(ops, x, eps))

    lo, hi = 0.0, 1.0
    c = min(rows(y), key=lambda row: primal_margin(problem(hi), row))  # a row some ε ≤ 1 breaks
    assert primal_margin(problem(hi), c) <= 0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if primal_margin(problem(mid), c) > 0 else (lo, mid)
    assert lo > 0 and primal_margin(problem(lo), c) > 0  # the old rule would certify this row at lo
    value, _, _ = min_margin(problem(lo), c, None, MILP_NODES)
    assert value is not None and value <= 0
    with torch.no_grad():
        lb = margin_lower_bound(ops, x[None], torch.tensor([y]), torch.tensor([lo], dtype=torch.float32), "milp",
                                **MILP_LIMITS)
    assert not float(lb[0]) > 0
