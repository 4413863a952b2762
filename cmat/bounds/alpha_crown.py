"""α-CROWN (Xu et al. 2021): CROWN with the lower ReLU slopes of the last segment optimised."""
from __future__ import annotations

from typing import Optional

import torch

from cmat.bounds.crown import crown, crown_bounds, segment_start
from cmat.bounds.ops import ReLU


def alpha_crown(ops: list, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor, steps: int = 20,
                lr: float = 0.1, max_neurons: Optional[int] = None) -> torch.Tensor:
    """α-CROWN (Xu et al. 2021) on the final specification: the lower relaxation relu(z) ≥ α·z
    of every unstable neuron of the last segment gets its own slope α ∈ [0, 1] per sample,
    optimised by Adam (``steps`` steps) to maximise the bound; intermediate bounds are CROWN's.
    Any α in [0, 1] gives a sound bound, so the result is the elementwise best over CROWN's
    choice and every iterate — never looser than :func:`crown`."""
    bounds = crown_bounds(ops, lo, hi, max_neurons)
    best = crown(ops, lo, hi, spec, bounds)
    s = segment_start(ops, len(ops))
    params = {}
    for k in range(s, len(ops)):
        if isinstance(ops[k], ReLU):
            lb, u = bounds[k][0].unsqueeze(1), bounds[k][1].unsqueeze(1)
            params[k] = (u > -lb).to(lo.dtype).clone().requires_grad_(True)
    if not params or steps < 1:
        return best
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            lower = crown(ops, lo, hi, spec, bounds, params)
            opt.zero_grad()
            (-lower.sum()).backward()
            opt.step()
            with torch.no_grad():
                for a in params.values():
                    a.clamp_(0, 1)
                best = torch.max(best, lower.detach())
        with torch.no_grad():
            best = torch.max(best, crown(ops, lo, hi, spec, bounds, params))
    return best
