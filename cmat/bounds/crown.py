"""CROWN (Zhang et al. 2018): backward linear bound propagation.

For a specification Λ·f(x) (e.g. the margin rows e_y − e_k, k ≠ y) the bound is propagated
back through affine operations exactly (vector–Jacobian products) and through each ReLU with
the linear relaxation lower = a·z (a ∈ {0, 1}, the adaptive choice, or a given slope α),
upper = u/(u − l)·(z − l) on unstable neurons, using pre-activation bounds computed the same way
for every earlier ReLU. A MaxPool is not propagated through: the back-substitution stops there
and concretises over the interval of the MaxPool's output (interval fallback). Every CROWN
bound is intersected with IBP's, so CROWN is never looser than IBP.
"""
from __future__ import annotations

from typing import Optional

import torch

from cmat.bounds.ibp import concretize, ibp
from cmat.bounds.ops import ChannelAffine, Flatten, MaxPool, ReLU


def backward_lower(ops: list, shapes: list, bounds: list, lam: torch.Tensor,
                    alphas: Optional[dict] = None) -> torch.Tensor:
    """Lower bound of Λ·(output of ``ops``) over the box ``bounds[0]`` of their input, by
    back-substitution (no MaxPool inside); ``bounds[k]`` holds the input bounds of ``ops[k]``
    (pre-activation bounds for ReLUs), ``shapes[k]`` its input shape. Λ: (N, K, *out).
    ``alphas[k]``: lower slopes of ReLU ``ops[k]``'s unstable neurons (default: CROWN's
    adaptive 0/1 choice)."""
    const = torch.zeros(lam.shape[:2], dtype=lam.dtype, device=lam.device)
    for k in range(len(ops) - 1, -1, -1):
        op = ops[k]
        if isinstance(op, ReLU):
            lb, u = bounds[k][0].unsqueeze(1), bounds[k][1].unsqueeze(1)
            unstable = (lb < 0) & (u > 0)
            active = (lb >= 0).to(lam.dtype)
            slope_up = torch.where(unstable, u / (u - lb).clamp(min=1e-12), active)
            icpt_up = torch.where(unstable, -slope_up * lb, torch.zeros_like(lb))
            chosen = alphas[k] if alphas is not None and k in alphas else (u > -lb).to(lam.dtype)
            slope_lo = torch.where(unstable, chosen, active)
            pos, neg = lam.clamp(min=0), lam.clamp(max=0)
            const = const + (neg * icpt_up).flatten(2).sum(2)
            lam = pos * slope_lo + neg * slope_up
        else:
            const = const + op.bias_term(lam, shapes[k])
            lam = op.vjp(lam, shapes[k])
    return concretize(lam, const, *bounds[0])


def segment_start(ops: list, end: int) -> int:
    """Index just after the last MaxPool before ``end`` (0 if none): CROWN's back-substitution
    stops there and uses the interval of the MaxPool's output."""
    for i in range(end - 1, -1, -1):
        if isinstance(ops[i], MaxPool):
            return i + 1
    return 0


def interval_exact(segment: list) -> bool:
    """Whether interval arithmetic is already exact on ``segment``: no ReLU and at most one op
    that mixes coordinates (per-channel affine maps and Flatten are diagonal/permutations, so
    |A₂A₁| = |A₂||A₁| there). CROWN cannot tighten such bounds, so it is skipped."""
    if any(isinstance(op, (ReLU, MaxPool)) for op in segment):
        return False
    return sum(not isinstance(op, (ChannelAffine, Flatten)) for op in segment) <= 1


def intersect(a, b):
    """The intersection of two (lo, hi) boxes."""
    return torch.max(a[0], b[0]), torch.min(a[1], b[1])


ROW_BUDGET = 2 ** 26  # floats per chunk of CROWN rows (N × rows × layer width): ~256 MB in float32


def crown_bounds(ops: list, lo: torch.Tensor, hi: torch.Tensor, max_neurons: Optional[int] = None,
                 row_budget: int = ROW_BUDGET) -> list:
    """Input bounds of every op (``bounds[i]`` for ``ops[i]``, ``bounds[-1]`` the output): IBP,
    with the pre-activation bounds of every ReLU's unstable neurons tightened by CROWN
    (back-substitution to the segment start), intersected with IBP's. Unstable neurons are
    processed in chunks of at most ``row_budget`` floats, so wide layers are tightened too (the
    cost grows with their number; memory stays bounded); ``max_neurons`` caps the cost: a
    layer with more unstable neurons (over the batch) keeps its IBP bounds — sound, looser.
    Segments on which interval arithmetic is already exact are skipped."""
    bounds: list = []
    out = ibp(ops, lo, hi, bounds)
    bounds.append(out)
    shapes = [b[0].shape[1:] for b in bounds]
    n = lo.shape[0]
    for i, op in enumerate(ops):
        if not isinstance(op, ReLU):
            continue
        s = segment_start(ops, i)
        if s == i or interval_exact(ops[s:i]):
            continue
        l0, u0 = bounds[i][0].flatten(1), bounds[i][1].flatten(1)
        idx = ((l0 < 0) & (u0 > 0)).any(0).nonzero().squeeze(1)  # only unstable neurons need CROWN
        if idx.numel() == 0 or (max_neurons is not None and idx.numel() > max_neurons):
            continue
        dim = l0.shape[1]
        widest = max(int(torch.tensor(sh).prod()) for sh in shapes[s:i + 1])
        chunk = max(1, row_budget // max(n * widest, 1))
        new_l, new_u = l0.clone(), u0.clone()
        for c in range(0, idx.numel(), chunk):
            part = idx[c:c + chunk]
            rows = torch.zeros(part.numel(), dim, dtype=lo.dtype, device=lo.device)
            rows[torch.arange(part.numel()), part] = 1
            rows = rows.view((1, part.numel()) + tuple(shapes[i])).expand(n, -1, *shapes[i])
            low = backward_lower(ops[s:i], shapes[s:i], bounds[s:i], rows)
            up = -backward_lower(ops[s:i], shapes[s:i], bounds[s:i], -rows)
            new_l[:, part] = torch.max(l0[:, part], low)
            new_u[:, part] = torch.min(u0[:, part], up)
        bounds[i] = (new_l.view_as(bounds[i][0]), new_u.view_as(bounds[i][1]))
        later: list = []
        last = ibp(ops[i:], *bounds[i], later)
        later.append(last)
        bounds[i + 1:] = [intersect(a, b) for a, b in zip(bounds[i + 1:], later[1:])]
    return bounds


def crown(ops: list, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor, bounds: Optional[list] = None,
          alphas: Optional[dict] = None, max_neurons: Optional[int] = None) -> torch.Tensor:
    """Lower bounds of ``spec @ f(x)`` (spec: N×K×classes) over the box [lo, hi], CROWN ∩ IBP,
    from :func:`crown_bounds` (computed here unless given); ``alphas`` (ReLU op index → lower
    slopes in [0, 1] of its unstable neurons, shape N×1×…) replace CROWN's adaptive choice."""
    bounds = bounds if bounds is not None else crown_bounds(ops, lo, hi, max_neurons)
    shapes = [b[0].shape[1:] for b in bounds]
    s = segment_start(ops, len(ops))
    shifted = None if alphas is None else {k - s: v for k, v in alphas.items() if k >= s}
    lower = backward_lower(ops[s:], shapes[s:], bounds[s:], spec, shifted)
    zero = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
    return torch.max(lower, concretize(spec, zero, *bounds[-1]))
