"""PGD (Madry et al. 2018) and FGSM: signed-gradient steps projected on the L∞ ball."""
from __future__ import annotations

from typing import Optional

import torch

from cmat.checks import number
from cmat.attacks.base import LOSSES, Attack, batch_loss, per_example_loss, uniform_noise
from cmat.errors import CmatError


def ascend(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, eps, alpha, steps: int, loss,
           project: bool = True) -> torch.Tensor:
    """``steps`` signed-gradient steps from ``x_adv`` (updated in place and returned):
    x_adv ← clip_[0,1](Π_ε(x_adv + α·sign ∇L)) — the one PGD kernel of cmat (evaluation attacks,
    training attacks, TRADES' adversary, verify's per-sample bisection).

    ``loss``: ``"ce"`` / ``"cw"`` (mean over the batch, :func:`batch_loss`) or a callable
    ``logits ↦ scalar`` (TRADES' KL to the clean prediction). ``eps`` and ``alpha``: floats, or
    per-sample tensors broadcastable to ``x`` (shape (N, 1, 1, 1)). With a float ε the projection
    is Π(z) = x + clamp(z − x, −ε, ε), the operation order of torchattacks' PGD (through the same
    model the results are bit-identical to it); with a per-sample ε it is min(max(z, x − ε), x + ε).
    ``project=False`` skips the projection (a no-op in exact arithmetic when one step of α ≤ ε
    starts at x)."""
    objective = (lambda logits: batch_loss(logits, y, loss)) if isinstance(loss, str) else loss
    per_sample = torch.is_tensor(eps)
    lo, hi = (x - eps, x + eps) if per_sample and project else (None, None)
    sign, delta = torch.empty_like(x), (torch.empty_like(x) if project and not per_sample else None)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(objective(model(x_adv)), x_adv)
        x_adv.requires_grad_(False)
        torch.sign(grad, out=sign)  # grad may be a broadcast view: no sign_
        if torch.is_tensor(alpha):  # per-sample step (N, 1, 1, 1)
            x_adv.add_(sign * alpha)
        else:
            x_adv.add_(sign, alpha=alpha)
        if project and per_sample:
            torch.max(x_adv, lo, out=x_adv)
            torch.min(x_adv, hi, out=x_adv)
        elif project:
            torch.sub(x_adv, x, out=delta).clamp_(-eps, eps)
            torch.add(x, delta, out=x_adv)
        x_adv.clamp_(0, 1)
    return x_adv


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018), L∞, ``steps`` steps of size ``alpha``.

    ``restarts`` > 1 repeats the attack from fresh random starts on the examples not yet fooled
    and keeps, per example, the first adversarial that fools the model (argmax ≠ y), otherwise
    the one of highest loss. Restart r uses the r-th draw from the generator (drawn for the whole
    batch), so restart 0 is exactly the ``restarts=1`` attack and more restarts are never weaker.
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, restarts: int = 1, loss: str = "ce", fold_bn: bool = True):
        self.eps = number("attack eps", eps, 0)
        self.alpha = number("attack alpha", alpha, 0, lo_open=True)
        self.steps = number("attack steps", steps, 1, integer=True)
        self.restarts = number("attack restarts", restarts, 1, integer=True)
        if loss not in LOSSES:
            raise CmatError(f"attack loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if self.restarts > 1 and not random_start:
            raise CmatError("PGD restarts > 1 need random_start=True (otherwise every restart is the same)")
        self.random_start, self.loss, self.fold_bn = bool(random_start), loss, bool(fold_bn)

    def params(self) -> dict:
        return {"attack": "PGD", "eps": self.eps, "alpha": self.alpha, "steps": self.steps,
                "random_start": self.random_start, "restarts": self.restarts, "loss": self.loss}

    def _start(self, x, generator):
        if not self.random_start:
            return x.clone()
        return (x + uniform_noise(x, self.eps, generator)).clamp_(0, 1)

    def _ascend(self, grad_model, x, y, start):
        return ascend(grad_model, x, y, start, self.eps, self.alpha, self.steps, self.loss)

    @torch.no_grad()
    def _judge(self, model, x_adv, y):
        logits = model(x_adv)
        return logits.argmax(1) != y, per_example_loss(logits, y, self.loss)

    def _run(self, model, grad_model, x, y, generator):
        x_adv = self._ascend(grad_model, x, y, self._start(x, generator))
        if self.restarts == 1:
            return x_adv
        fooled, best = self._judge(model, x_adv, y)
        for _ in range(1, self.restarts):
            start = self._start(x, generator)  # whole-batch draw: the stream ignores who is fooled
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            cand = self._ascend(grad_model, x[idx], y[idx], start[idx])
            hit, loss = self._judge(model, cand, y[idx])
            take = hit | (loss > best[idx])
            keep = idx[take]
            x_adv[keep], best[keep], fooled[keep] = cand[take], loss[take], hit[take]
        return x_adv


class FGSM(PGD):
    """Fast gradient sign method: one step of size α (default ε) from x, or — ``random_start`` —
    from x + U(−ε, ε) (Wong et al. 2020 "fast" AT, with α = 1.25ε), projected to the ε-ball.
    Without a random start and α ≤ ε the projection is skipped (it cannot bind), which keeps the
    result bit-identical to ``torchattacks.FGSM``."""

    def __init__(self, eps: float = 8 / 255, random_start: bool = False, alpha: Optional[float] = None,
                 loss: str = "ce", fold_bn: bool = True):
        super().__init__(eps, eps if alpha is None else alpha, 1, random_start, 1, loss, fold_bn)

    def params(self) -> dict:
        return {"attack": "FGSM", "eps": self.eps, "alpha": self.alpha, "steps": 1,
                "random_start": self.random_start, "loss": self.loss}

    def _ascend(self, grad_model, x, y, start):
        project = self.random_start or self.alpha > self.eps
        return ascend(grad_model, x, y, start, self.eps, self.alpha, 1, self.loss, project)


# ----------------------------------------------------------------------------- APGD
