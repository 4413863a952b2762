"""Interval bound propagation (IBP): interval arithmetic layer by layer, centre/radius form
for affine operations (c ↦ A c + b, r ↦ |A| r), monotone for ReLU and MaxPool; and the
concretisation of a linear function over a box, shared by every bound."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from cmat.bounds.ops import MaxPool, ReLU


def input_box(x: torch.Tensor, eps: torch.Tensor):
    """The box B(x, ε) ∩ [0, 1]ⁿ as (lo, hi); ``eps`` holds one radius per sample."""
    e = eps.view((-1,) + (1,) * (x.dim() - 1))
    return (x - e).clamp(0, 1), (x + e).clamp(0, 1)


def ibp(ops: list, lo: torch.Tensor, hi: torch.Tensor, record: Optional[list] = None):
    """Interval bounds of every operation's output; ``record`` collects (lo, hi) per op input."""
    for op in ops:
        if record is not None:
            record.append((lo, hi))
        if isinstance(op, ReLU):
            lo, hi = F.relu(lo), F.relu(hi)
        elif isinstance(op, MaxPool):
            lo, hi = op.module(lo), op.module(hi)
        else:
            c, r = (hi + lo) / 2, (hi - lo) / 2
            c, r = op.forward(c), op.abs_linear(r)
            lo, hi = c - r, c + r
    return lo, hi


def concretize(lam: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """min over the box of Λ z + const: Λ⁺ lo + Λ⁻ hi + const, per (N, K)."""
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    return (pos * lo.unsqueeze(1)).flatten(2).sum(2) + (neg * hi.unsqueeze(1)).flatten(2).sum(2) + const
