"""Adversarial-training objectives: standard, pgd (Madry), trades, fast (FGSM with random start)
and free (minibatch replay); see :mod:`cmat.objectives.base` for the contract."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cmat.attacks import FGSM, PGD, ascend, eval_mode
from cmat.errors import CmatError
from cmat.objectives.base import Objective, register_objective


@register_objective
class Standard(Objective):
    """Cross-entropy on clean images (no attack)."""

    name = "standard"
    supports_ddp = True
    adversarial = False

    def loss(self, model, x, y, generator):
        logits = model(x)
        return F.cross_entropy(logits, y), logits


@register_objective
class MadryPGD(Objective):
    """Madry et al. 2018: cross-entropy on PGD-K adversarial examples (objective.steps, threat α)."""

    name = "pgd"
    supports_ddp = True

    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        self.passes = cfg.steps + 1  # K attack steps, then the training step
        self.attack = PGD(eps=self.eps, alpha=self.alpha, steps=cfg.steps, random_start=True)

    def loss(self, model, x, y, generator):
        r = self.ramp()
        if r < 1:  # ε ramp: the same attack on a smaller ball (r = 0: the clean batch)
            attack = (PGD(eps=r * self.eps, alpha=r * self.alpha, steps=self.cfg.steps, random_start=True)
                      if r > 0 else None)
        else:
            attack = self.attack
        x_adv = attack(self.attack_view(model), x, y, generator=generator) if attack is not None else x
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def describe(self):
        ramp = {"eps_ramp": self.cfg.eps_ramp} if self.cfg.eps_ramp else {}
        return {**super().describe(), "steps": self.cfg.steps, **ramp}


@register_objective
class Trades(Objective):
    """TRADES (Zhang et al. 2019): CE(f(x)) + β·KL(f(x) ‖ f(x_adv)), x_adv by PGD on the KL."""

    name = "trades"

    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        self.passes = cfg.steps + 2  # K attack steps, then f(x) and f(x_adv) in the loss
    def _adversary(self, model, x, generator):
        r = self.ramp()
        if r <= 0:
            return x
        eps, alpha = r * self.eps, r * self.alpha
        view = self.attack_view(model)
        with eval_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(view(x), dim=1)
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            start = (x + 0.001 * noise).clamp(0, 1)

            def kl(logits):  # summed KL(p_clean ‖ p_adv): TRADES' inner maximisation
                return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")

            x_adv = ascend(view, x, None, start, eps, alpha, self.cfg.steps, kl)
        return x_adv.detach()

    def loss(self, model, x, y, generator):
        x_adv = self._adversary(model, x, generator)
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.cfg.trades_beta * robust, logits

    def describe(self):
        ramp = {"eps_ramp": self.cfg.eps_ramp} if self.cfg.eps_ramp else {}
        return {**super().describe(), "steps": self.cfg.steps, "beta": self.cfg.trades_beta, **ramp}


@register_objective
class FastFGSM(Objective):
    """Fast AT (Wong et al. 2020): one FGSM step from a random start, α = fast_alpha·ε."""

    name = "fast"
    supports_ddp = True
    detects_collapse = True
    passes = 2  # one FGSM step, then the training step
    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        self.attack = FGSM(eps=self.eps, random_start=True, alpha=cfg.fast_alpha * self.eps)

    def loss(self, model, x, y, generator):
        r = self.ramp()
        attack = self.attack if r >= 1 else (FGSM(eps=r * self.eps, random_start=True,
                                                  alpha=self.cfg.fast_alpha * r * self.eps)
                                             if r > 0 else None)
        x_adv = attack(self.attack_view(model), x, y, generator=generator) if attack is not None else x
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def describe(self):
        ramp = {"eps_ramp": self.cfg.eps_ramp} if self.cfg.eps_ramp else {}
        return {**super().describe(), "alpha": self.cfg.fast_alpha * self.eps, **ramp}


@register_objective
class FreeAT(Objective):
    """Free AT (Shafahi et al. 2019): each minibatch replayed, the perturbation carried over."""

    name = "free"
    supports_ddp = True

    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        if cfg.free_replays < 1:
            raise CmatError(f"objective.free_replays must be ≥ 1, got {cfg.free_replays}")
        self.replays = int(cfg.free_replays)
        self.delta = None
        self._current = None

    def loss(self, model, x, y, generator):
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x)
        delta = self.delta.detach().requires_grad_(True)
        self._current = (x, delta)
        logits = model((x + delta).clamp(0, 1))
        return F.cross_entropy(logits, y), logits

    def reset(self, warm: bool = False):
        self.delta = None
        self._current = None

    def after_backward(self):
        x, delta = self._current
        step = self.eps * delta.grad.sign()
        new = (delta.detach() + step).clamp(-self.eps, self.eps)
        self.delta = ((x + new).clamp(0, 1) - x).detach()
        self._current = None

    def describe(self):
        return {**super().describe(), "replays": self.replays}
