"""Mask algebra of the masked layers: the piggyback constants, bit-packed masks and the
effective-weight function with its gradient rules.

For task t the effective weight is ``W_t = W ⊙ used`` with ``used = own ∨ (old ∧ P_t)``:
``own = (O == t)``, ``old = (0 < O < t)`` and ``P_t = 1[m_t > PIGGY_THRESHOLD]`` the binarised
piggyback mask (see :mod:`cmat.nn.masked_layers` for the layers that hold ``W``, ``O`` and ``m_t``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx  # noqa: F401  (is_fx_tracing)

PIGGY_THRESHOLD = 5e-3
PIGGY_INIT = 1e-2


class PackedBits:
    """A bool tensor kept bit-packed (``np.packbits``, 1 bit per entry) in host memory. A task's
    binarised piggyback mask spans the whole weight: unpacked, 20 tasks of the width-1.5 VGG16
    held ~1 GB (measured growth 48 MB per task); packed, 120 MB."""

    __slots__ = ("packed", "shape")

    def __init__(self, mask: torch.Tensor):
        self.shape = tuple(mask.shape)
        self.packed = np.packbits(mask.detach().to("cpu", torch.bool).numpy().reshape(-1))

    def unpack(self, device=None) -> torch.Tensor:
        n = int(np.prod(self.shape))
        bits = torch.from_numpy(np.unpackbits(self.packed, count=n).view(np.bool_)).reshape(self.shape)
        return bits if device is None else bits.to(device)


def fx_tracing() -> bool:
    """True while torch.fx traces the module (no caching of symbolic values then)."""
    mod = torch.fx._symbolic_trace
    check = getattr(mod, "is_fx_symbolic_tracing", None) or getattr(mod, "is_fx_tracing", None)
    return bool(check and check())


class EffectiveWeight(torch.autograd.Function):
    """``W_t = W ⊙ used`` with ``used = own ∨ (old ∧ P_t)`` (bool, computed by the caller), in one
    multiply; backward: ``∂/∂W = g ⊙ own`` (only task t's weights learn) and, when a real mask
    ``m`` is given, the straight-through ``∂/∂m = g ⊙ W ⊙ old``. Identical to
    ``where(own, W, W.detach() · STE(m) · old)`` in value and gradients, with fewer passes over
    the weights (which dominate the cost of a masked step for fully connected layers)."""

    @staticmethod
    def forward(ctx, w, m, own, old, used):
        ctx.save_for_backward(w, own, old)
        ctx.has_mask = m is not None
        return w * used

    @staticmethod
    def backward(ctx, grad):
        w, own, old = ctx.saved_tensors
        grad_w = grad * own if ctx.needs_input_grad[0] else None
        grad_m = None
        if ctx.has_mask and ctx.needs_input_grad[1]:
            grad_m = grad * w * old
        return grad_w, grad_m, None, None, None


def top_fraction(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Bool mask of the ``round(density · n)`` largest ``|scores|`` (at least one): edge-popup's
    supermask (Ramanujan et al. 2020), the subnetwork SupSup and WSN select per task."""
    flat = scores.detach().abs().flatten()
    k = max(1, int(round(density * flat.numel())))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view(scores.shape)


class SupermaskWeight(torch.autograd.Function):
    """``W_t = W ⊙ M`` with ``M = top_fraction(S)`` a task's supermask over its slice (bool,
    computed by the caller from ``|S|``); backward: ``∂/∂W = g ⊙ M ⊙ own`` (only weights task t
    owns learn; none for SupSup, whose weights are not parameters of the step) and the
    straight-through gradient through ``|S|`` on every score, selected or not (edge-popup):
    ``∂/∂S = g ⊙ W ⊙ sign(S)`` — a larger ``|S|`` is what selects a weight."""

    @staticmethod
    def forward(ctx, w, scores, own, mask):
        ctx.save_for_backward(w, scores, own, mask)
        return w * mask

    @staticmethod
    def backward(ctx, grad):
        w, scores, own, mask = ctx.saved_tensors
        grad_w = grad * (mask & own) if ctx.needs_input_grad[0] else None
        grad_s = grad * w * torch.sign(scores) if ctx.needs_input_grad[1] else None
        return grad_w, grad_s, None, None
