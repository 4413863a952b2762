"""The certified bit needs the margin bound above a rounding tolerance (cmat.bounds.tolerance),
everywhere a bound becomes a bit: the harness (certified_mask), `cmat verify` (proven, the
bisection of critical_eps) and MILP.

The networks are linear (one Linear layer after a Flatten): the minimum margin over the box is
attained exactly at a corner, and CROWN and MILP compute it exactly up to rounding. The last
bias is set so that the exact minimum is 0 (or a tiny positive number): a bound there is inside
rounding, and the float32 model at the minimiser can be on the wrong side of it."""
import copy

import pytest
import torch
from torch import nn

from cmat.bounds import certified_mask, margin_lower_bound, network_ops, proven, run_ops
from cmat.nn.multihead import MultiHeadNet
from cmat.bounds.tolerance import certification_tolerance
from cmat.verify import critical_eps

EPS = 0.1


def _linear_net(seed: int, shift: float = 0.0):
    """(model, x, minimiser x*) of a 2-class linear network on a 1×4×8 image whose exact minimum
    margin f_0 − f_1 over B(x, EPS) (float64, of the float32 weights) is ``shift`` up to the
    rounding of the bias to float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, 4, 8, generator=g) * 0.6 + 0.2  # the box stays inside [0, 1]
    lin = nn.Linear(32, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 32, generator=g) * 0.3)
        lin.bias.copy_(torch.randn(2, generator=g))
        w = (lin.weight[0] - lin.weight[1]).double()
        star = x.double().flatten(1) - EPS * torch.sign(w)
        exact = float(star[0] @ w + (lin.bias[0] - lin.bias[1]).double())
        lin.bias[0] -= torch.tensor(exact - shift, dtype=torch.float32)
    return nn.Sequential(nn.Flatten(), lin).eval(), x, star.float().view_as(x)


def _float32_margin(model, x) -> float:
    with torch.no_grad():
        out = model(x)
    return float(out[0, 0] - out[0, 1])


def test_a_bound_attained_exactly_never_certifies_though_zero_would():
    y, e = torch.tensor([0]), torch.full((1,), EPS)
    fooled = 0  # cases where "bound > 0" certifies an image the float32 model misclassifies in the ball
    for seed in range(60):
        model, x, star = _linear_net(seed)
        ops = network_ops(model)
        with torch.no_grad():
            lower = float(margin_lower_bound(ops, x, y, e, "crown"))
            tol = float(certification_tolerance(ops, x, e))
            assert abs(lower) < tol / 10, (seed, lower, tol)  # the tolerance dwarfs the rounding here
            fooled += lower > 0 and _float32_margin(model, star) <= 0
            for bound in ("crown", "alpha-crown", "milp"):
                assert not bool(proven(ops, x, y, e, bound, time_limit=None, node_limit=1000)), (seed, bound)
            assert not bool(certified_mask(model, x, y, EPS, "crown")[0])
    assert fooled > 0  # the old rule (> 0) certified images whose float32 margin is ≤ 0


def test_a_margin_below_the_tolerance_does_not_certify_and_one_above_does():
    y, e = torch.tensor([0]), torch.full((1,), EPS)
    model, x, _ = _linear_net(0)
    tol = float(certification_tolerance(network_ops(model), x, e))
    for shift, expect in ((tol / 2, False), (3 * tol, True)):
        model, x, _ = _linear_net(0, shift)
        ops = network_ops(model)
        for bound in ("crown", "milp"):
            lower = float(margin_lower_bound(ops, x, y, e, bound, time_limit=None, node_limit=1000))
            assert bool(proven(ops, x, y, e, bound, time_limit=None, node_limit=1000)) is expect, (bound, lower, tol)
            if bound == "crown":
                assert lower > 0  # positive but, at tol / 2, inside the tolerance


def test_verify_bisects_to_the_radius_where_the_margin_reaches_the_tolerance_not_zero():
    """Inside the box the exact minimum margin is m(ε) = m₀ − ε·|w|₁: the certified radius of
    `cmat verify` (fine bisection) is (m₀ − τ)/|w|₁, below the radius m₀/|w|₁ where the margin
    bound crosses 0 by more than the tolerance's width."""
    model, x, _ = _linear_net(3, shift=1e-4)  # m(EPS) = 1e-4
    w1 = float((model[1].weight[0] - model[1].weight[1]).detach().abs().sum())
    res = critical_eps(model, x, torch.tensor([0]), eps_max=EPS + 1e-3, bound="crown", iters=40, attack_steps=5)
    cert = float(res["certified"][0])
    m0 = 1e-4 + EPS * w1
    tol = float(certification_tolerance(network_ops(model), x, torch.full((1,), cert)))
    assert abs(cert - (m0 - tol) / w1) < 0.1 * tol / w1, (cert, (m0 - tol) / w1, m0 / w1)


def _bn_net(arch: str, size: int):
    torch.manual_seed(0)
    net = MultiHeadNet(arch, 1, size, [10], [[0.3]], [[0.3]], width=1.0 if arch == "cnn-ibp" else 0.25)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm statistics whose scale and shift cancel, as trained ones do
            net.task_view(0)(torch.rand(16, 1, size, size))
    return net.task_view(0).eval()


@pytest.mark.parametrize("arch,size", [("smallcnn", 8)])  # cnn-ibp at 28×28: measured in the docstring, slow here
def test_the_tolerance_covers_the_measured_float32_rounding_of_the_bounds_tenfold(arch, size):
    """The calibration behind K (cmat.bounds.tolerance): the same bound in float32 and in float64
    on the same network differs by at most τ/10, and so do the logits."""
    model = _bn_net(arch, size)
    x = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(1))
    ops32, ops64 = network_ops(model), network_ops(copy.deepcopy(model).double())
    with torch.no_grad():
        y = run_ops(ops32, x).argmax(1)
        logit_err = (run_ops(ops32, x).double() - run_ops(ops64, x.double())).abs().amax(1)
        for e in (0.001, 0.01):
            eps = torch.full((4,), e)
            tol = certification_tolerance(ops32, x, eps).double()
            assert torch.all(logit_err <= tol / 10)
            for bound in ("ibp", "crown"):
                err = (margin_lower_bound(ops32, x, y, eps, bound).double()
                       - margin_lower_bound(ops64, x.double(), y, eps.double(), bound)).abs()
                assert torch.all(err <= tol / 10), (bound, e, (err / tol).max())
