"""Certified training: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020) objectives.

Both minimise a mix of the natural loss and the cross-entropy of the *worst-case logits* —
the lower bounds m̲_k(x, ε) of the margins z_y − z_k over the ball B(x, ε), arranged as logits
(−m̲_k for k ≠ y, 0 for y):

    L = κ·CE(f(x), y) + (1 − κ)·CE(−m̲(x, ε_t), y)

- ``ibp``: m̲ from interval bound propagation.
- ``crown-ibp``: m̲ = β·m̲_CROWN-IBP + (1 − β)·m̲_IBP, where CROWN-IBP is CROWN's backward pass
  from the margin specification with IBP's intermediate (pre-activation) bounds.

Schedules, over the iterations of one training phase (``Trainer.fit``): the first
``cert_warmup`` fraction is natural training (ε_t = 0, κ = 1, β = 1); over the next
``cert_ramp`` fraction ε_t grows linearly to ``cert_eps_factor``·ε, κ from 1 to ``kappa_end``
and β from 1 to ``beta_end``; the rest trains at the final values (the papers' ramp-up).
A *warm* phase (growth, compaction, PackNet's retraining: the model already holds this task's
certified solution) trains at the final values throughout: ramping ε from 0 again would first
undo the certificates it is meant to keep. Gradients are clipped to norm ``cert_clip``
(Shi et al. 2021; 0: off).

Bounds go through exactly what the forward pass computes: masked layers' effective weights
(differentiable), the task's normalisation, BN layers and head. BN follows the papers'
convention: a BN layer in training mode normalises the bound pass with the batch statistics of
the natural pass of the same minibatch (recorded by forward hooks), and a frozen BN layer (eval
mode) with its running statistics; for verification the model is in eval mode and BN is folded
to its running statistics.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cmat.bounds import network_ops, training_margin_lower_bound
from cmat.distributed import unwrap
from cmat.objectives.base import Objective, register_objective


@contextlib.contextmanager
def recorded_bn_stats(model: nn.Module):
    """Yields a dict filled, during forward passes inside the block, with ``bn → (mean, var)``:
    the batch statistics each training-mode BN layer normalised with (biased variance, as BN)."""
    stats: dict = {}
    handles = []

    def hook(bn, inputs, _output):
        if bn.training:
            x = inputs[0]
            dims = [0] + list(range(2, x.dim()))
            stats[bn] = (x.mean(dims), x.var(dims, unbiased=False))

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def worst_case_logits(ops: list, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float) -> torch.Tensor:
    """(N, C): −(lower bound of z_y − z_k) for k ≠ y and 0 at y, over B(x, ε) ∩ [0, 1]ⁿ;
    the bound is β·CROWN-IBP + (1 − β)·IBP (β = 0: pure IBP, no backward pass), from
    :func:`cmat.bounds.training_margin_lower_bound`."""
    lower = training_margin_lower_bound(ops, x, y, eps, beta)
    logits = torch.zeros(len(x), lower.shape[1] + 1, dtype=x.dtype, device=x.device)
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[torch.arange(len(x)), y] = False
    return logits.masked_scatter(keep, -lower)


@register_objective
class CertifiedObjective(Objective):
    """IBP training (Gowal et al. 2018): κ·CE(clean) + (1 − κ)·CE(interval worst-case logits), ε ramped.

    ``total_iters`` is set by the trainer before each phase."""

    name = "ibp"
    use_crown = False
    passes = 2  # the natural pass and the interval pass (each forward + backward)
    certified = True
    selection = "last"  # a ramped schedule ends at its target: earlier epochs are not candidates

    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        self.total_iters = 1
        self.step = 0
        self.warm = False
        self._params = None

    def reset(self, warm: bool = False) -> None:
        self.step = 0
        self._params = None
        self.warm = warm

    @property
    def certificate(self) -> str:
        """The bound behind the validation metric (certified accuracy; model selection and CMAT's
        decisions): the one the schedule ends on — ``crown`` for CROWN-IBP with ``beta_end`` > 0,
        else ``ibp`` (sound either way; IBP is what the final loss optimises, and it costs one
        forward pass where CROWN took 10-30 s per validation on the toy CNN)."""
        return "crown" if self.use_crown and self.cfg.beta_end > 0 else "ibp"

    def after_backward(self) -> None:
        """Clip the gradient norm to ``cert_clip`` (Shi et al. 2021): loose early bounds give
        huge robust losses whose raw gradients wreck the network."""
        if self._params and self.cfg.cert_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, self.cfg.cert_clip)

    def schedule(self) -> dict:
        """ε_t, κ and β at the current iteration of the phase."""
        c = self.cfg
        p = 1.0 if self.warm else self.step / max(self.total_iters, 1)
        r = min(max((p - c.cert_warmup) / max(c.cert_ramp, 1e-12), 0.0), 1.0)
        beta_end = c.beta_end if self.use_crown else 0.0
        return {"eps": r * c.cert_eps_factor * self.eps, "kappa": 1 + r * (c.kappa_end - 1),
                "beta": (1 + r * (beta_end - 1)) if self.use_crown else 0.0}

    def loss(self, model, x, y, generator):
        s = self.schedule()
        self.step += 1
        self._params = [p for p in model.parameters() if p.requires_grad]
        with recorded_bn_stats(model) as stats:
            logits = model(x)
        natural = F.cross_entropy(logits, y)
        if s["eps"] <= 0:
            return natural, logits
        ops = network_ops(unwrap(model), live=stats)
        robust = F.cross_entropy(worst_case_logits(ops, x, y, s["eps"], s["beta"]), y)
        return s["kappa"] * natural + (1 - s["kappa"]) * robust, logits

    def describe(self):
        c = self.cfg
        return {**super().describe(), "warmup": c.cert_warmup, "ramp": c.cert_ramp, "kappa_end": c.kappa_end,
                "eps_factor": c.cert_eps_factor, **({"beta_end": c.beta_end} if self.use_crown else {})}


@register_objective
class CrownIBP(CertifiedObjective):
    """CROWN-IBP (Zhang et al. 2020): worst-case logits from β·CROWN-IBP + (1 − β)·IBP, β ramped to beta_end."""

    name = "crown-ibp"
    use_crown = True
    passes = 3  # natural, interval and backward-bound passes
