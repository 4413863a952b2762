"""L∞ attacks on classifiers ``x ↦ logits`` that take images in [0, 1].

Threat model (pixel units; normalisation is the model's first layer):

- random start  x₀ = clip_[0,1](x + δ),  δ ~ U(−ε, ε)  (drawn from the caller's generator);
- step          x_{k+1} = clip_[0,1](Π_ε(x_k + α·sign ∇ₓL(f(x_k), y))),  Π_ε(z) = x + clamp(z − x, −ε, ε);
- losses        ``ce``: mean cross-entropy;  ``cw``: mean CW margin  max_{i≠y} z_i − z_y.

This module: the contract, losses and the :class:`Attack` base class. :class:`PGD` and :class:`FGSM` (one
step; with a random start and α = 1.25ε it is the "fast" training attack), :class:`AutoPGD` (APGD-CE /
APGD-T through torchattacks) and :func:`make_attack` (evaluation names such as ``pgd40``) are the public API.

Contract of every attack call ``atk(model, x, y, generator=None) -> x_adv``:

- ``x_adv`` is detached, in [0, 1] and within ε of ``x`` (up to one float rounding, ~6e-8);
- gradients are taken w.r.t. the input only (``torch.autograd.grad``): no parameter gets a
  ``.grad``; the model runs in eval mode (BN running statistics are used and never updated) and
  every submodule's ``training`` flag is restored afterwards, whatever it was;
- randomness comes from ``generator`` only (drawn on the generator's device, then moved to
  ``x``'s), so a call repeated with an equally seeded generator is bit-identical; ``None`` uses
  torch's global CPU generator.

Speed (the attack is the inner loop of adversarial training): the iterate is updated in place,
no host syncs inside the step loop, and by default gradients are computed on a copy of the
model with eval-mode BatchNorm folded into the preceding convolutions (:mod:`cmat.nn.fuse`;
measured 1.18× for VGG16-BN PGD-10 at batch 128 on CPU, ``scripts/bench_speed.py``). Folding
changes float rounding, not the attack; ``fold_bn=False`` computes through the unchanged model,
and is then bit-identical to torchattacks.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmat.errors import CmatError
from cmat.nn.fuse import fold_batchnorm

LOSSES = ("ce", "cw")
CROSSING = 2.5  # an evaluation PGD-k must be able to travel CROSSING·ε: α·k ≥ 2.5ε


def sound_alpha(eps: float, alpha: float, steps: int) -> float:
    """The step size of an evaluation/validation PGD-``steps``: α' = max(α, 2.5·ε/steps).

    k steps of α' can cross the ε-ball (α'·k ≥ 2.5ε, the robustness library's convention);
    with the threat model's α alone, e.g. MNIST's α = 0.01, ε = 0.3, PGD-10 travels 0.1 < ε and
    is weaker than FGSM. Training attacks keep the preset's α (see ``cmat.config.validate``)."""
    return max(float(alpha), CROSSING * float(eps) / int(steps))


# ----------------------------------------------------------------------------- losses

def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example CW margin ``max_{i≠y} z_i − z_y`` (> 0 ⇒ the example is misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The attack objective per example: cross-entropy (``ce``) or CW margin (``cw``)."""
    return F.cross_entropy(logits, y, reduction="none") if loss == "ce" else cw_margin(logits, y)


def batch_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean of :func:`per_example_loss` (``ce`` is exactly ``F.cross_entropy``'s mean)."""
    return F.cross_entropy(logits, y) if loss == "ce" else cw_margin(logits, y).mean()


# ----------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def eval_mode(model):
    """Run with ``model`` in eval mode; restore every submodule's own ``training`` flag after."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def uniform_noise(x: torch.Tensor, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """δ ~ U(−ε, ε) shaped like ``x``, drawn on ``generator``'s device, returned on ``x``'s."""
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.empty(x.shape, dtype=x.dtype, device=device).uniform_(-eps, eps, generator=generator)
    return noise.to(x.device)


def fmt_value(v) -> str:
    """8/255 for multiples of 1/255, else the shortest float."""
    if isinstance(v, float) and v > 0 and abs(v * 255 - round(v * 255)) < 1e-9:
        return f"{round(v * 255)}/255"
    return repr(v)


class Attack:
    """Base class. ``__call__`` copies the inputs, checks they lie in [0, 1], switches the model to
    eval mode (restored on exit), builds ``grad_model`` (BN folded when ``fold_bn``, else the model
    itself) and calls ``_run(model, grad_model, x, y, generator)``: gradients go through
    ``grad_model``, decisions such as "is this example fooled" through ``model``."""

    fold_bn = True
    certifies = False  # an attack; cmat.bounds' CertifiedCheck (a proof) sets True

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        with torch.inference_mode(False):
            x = x.detach().clone()
            y = y.detach().to(device=x.device, dtype=torch.long, copy=True)
            if x.numel():
                lo, hi = torch.aminmax(x)
                if lo < 0 or hi > 1:
                    raise CmatError(f"attack inputs must be images in [0, 1] (normalise inside the model), "
                                    f"got values in [{float(lo):.3g}, {float(hi):.3g}]")
            with eval_mode(model), torch.enable_grad():
                grad_model = model
                if self.fold_bn and isinstance(model, nn.Module):
                    plain = getattr(model, "plain_equivalent", None)  # masked nets export plain layers
                    grad_model = fold_batchnorm(plain() if plain is not None else model)
                return self._run(model, grad_model, x, y, generator).detach()

    def params(self) -> dict:
        """The attack's settings (``attack``, ``eps``, ``alpha``, ``steps``, ...); subclasses extend."""
        return {"attack": type(self).__name__}

    def __repr__(self) -> str:
        p = self.params()
        name = p.pop("attack")
        return f"{name}(" + ", ".join(f"{k}={fmt_value(v)}" for k, v in p.items()) + ")"
