"""Training objectives: how one minibatch becomes a loss.

The engine owns the optimiser; for each minibatch (replayed ``objective.replays`` times) it
calls ``loss, logits = objective.loss(model, x, y, generator)``, then ``loss.backward()``,
``objective.after_backward()``, the method's gradient hooks and ``optimizer.step()``.
``model`` is task t's classifier ``x ↦ logits`` in train mode; ``x`` is in [0, 1].

- ``standard``: CE(f(x), y).
- ``pgd`` (Madry et al. 2018): CE(f(x_adv), y), x_adv = PGD-K (random start, ε, α).
- ``trades`` (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)), x_adv maximises the KL
  from x + 0.001·N(0, I); β = 6.
- ``fast`` (Wong et al. 2020): CE(f(x_adv)), x_adv = FGSM from a uniform random start with
  α = 1.25ε. ``detects_collapse``: the engine checks validation PGD accuracy each epoch and stops
  (keeping the best state) on catastrophic overfitting.
- ``ibp`` / ``crown-ibp`` (Gowal et al. 2018; Zhang et al. 2020): certified training on bound-
  based worst-case logits, see :mod:`cmat.certified`.
- ``free`` (Shafahi et al. 2019): each minibatch replayed m times; one backward gives both the
  parameter gradient and the input gradient; δ ← Π_ε(δ + ε·sign(∇_δ)) is carried across replays
  and minibatches. The engine divides the epochs by m.
Training attacks never update BN running statistics: they are generated in eval mode
(``bn="eval"``, the default) or with batch statistics and running-stat updates suppressed
(``bn="batch"``).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from cmat.attacks import FGSM, PGD
from cmat.config import ObjectiveConfig, ThreatConfig
from cmat.distributed import unwrap
from cmat.errors import CmatError


@contextlib.contextmanager
def frozen_bn_batch_stats(model: nn.Module):
    """BN layers normalise with batch statistics and write no running statistics (train mode
    with ``track_running_stats`` off); both flags are restored on exit."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.training, m.track_running_stats))
            m.train(True)
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, mode, track in saved:
            m.train(mode)
            m.track_running_stats = track


class BatchStatsView(nn.Module):
    """``model`` evaluated with BN batch statistics and untouched running statistics, whatever
    mode the attack puts the view in (for ``bn="batch"`` training attacks)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with frozen_bn_batch_stats(self.model):
            return self.model(x)


class Objective(ABC):
    """``passes``: forward+backward passes per image of one ``loss`` call plus its backward,
    attack steps included — the unit of training compute (``cost.grad_evals``)."""

    name = "base"
    adversarial = True
    replays = 1
    detects_collapse = False
    passes = 1

    def __init__(self, cfg: ObjectiveConfig, threat: ThreatConfig):
        self.cfg = cfg
        self.eps = float(threat.eps)
        self.alpha = float(threat.alpha)

    def attack_view(self, model: nn.Module) -> nn.Module:
        """The module attacks run on: the plain module (never a DDP wrapper: input gradients
        need no gradient synchronisation), seen with batch statistics when ``bn: batch``."""
        model = unwrap(model)
        return BatchStatsView(model) if self.cfg.bn == "batch" else model

    @abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """``(loss, logits)`` for one minibatch; ``model`` is in train mode."""

    def after_backward(self) -> None:
        """Called after ``loss.backward()`` and before the optimiser step."""

    def reset(self) -> None:
        """Forget state carried across minibatches (called when a training phase starts)."""

    def describe(self) -> dict:
        return {"name": self.name, "eps": self.eps, "alpha": self.alpha}


class Standard(Objective):
    name = "standard"
    adversarial = False

    def loss(self, model, x, y, generator):
        logits = model(x)
        return F.cross_entropy(logits, y), logits


class MadryPGD(Objective):
    name = "pgd"

    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        self.passes = cfg.steps + 1  # K attack steps, then the training step
        self.attack = PGD(eps=self.eps, alpha=self.alpha, steps=cfg.steps, random_start=True)

    def loss(self, model, x, y, generator):
        x_adv = self.attack(self.attack_view(model), x, y, generator=generator)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def describe(self):
        return {**super().describe(), "steps": self.cfg.steps}


class Trades(Objective):
    name = "trades"

    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        self.passes = cfg.steps + 2  # K attack steps, then f(x) and f(x_adv) in the loss
    def _adversary(self, model, x, generator):
        view = self.attack_view(model)
        was_training = [m.training for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                p_clean = F.softmax(view(x), dim=1)
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x_adv = (x + 0.001 * noise).clamp(0, 1)
            for _ in range(self.cfg.steps):
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(view(x_adv), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = x_adv.detach() + self.alpha * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)
        finally:
            for m, mode in zip(model.modules(), was_training):
                m.training = mode
        return x_adv.detach()

    def loss(self, model, x, y, generator):
        x_adv = self._adversary(model, x, generator)
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.cfg.trades_beta * robust, logits

    def describe(self):
        return {**super().describe(), "steps": self.cfg.steps, "beta": self.cfg.trades_beta}


class FastFGSM(Objective):
    name = "fast"
    detects_collapse = True
    passes = 2  # one FGSM step, then the training step
    def __init__(self, cfg, threat):
        super().__init__(cfg, threat)
        self.attack = FGSM(eps=self.eps, random_start=True, alpha=cfg.fast_alpha * self.eps)

    def loss(self, model, x, y, generator):
        x_adv = self.attack(self.attack_view(model), x, y, generator=generator)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def describe(self):
        return {**super().describe(), "alpha": self.cfg.fast_alpha * self.eps}


class FreeAT(Objective):
    name = "free"

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

    def reset(self):
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


OBJECTIVES = {c.name: c for c in (Standard, MadryPGD, Trades, FastFGSM, FreeAT)}
CERTIFIED = ("ibp", "crown-ibp")  # cmat.certified (bound propagation; imported on use)


def objective_names() -> list:
    return list(OBJECTIVES) + list(CERTIFIED)


def make_objective(cfg: ObjectiveConfig, threat: ThreatConfig) -> Objective:
    if cfg.name in CERTIFIED:
        from cmat.certified import CertifiedObjective, CrownIBP

        return (CrownIBP if cfg.name == "crown-ibp" else CertifiedObjective)(cfg, threat)
    if cfg.name not in OBJECTIVES:
        raise CmatError(f"unknown objective {cfg.name!r} (valid: {', '.join(objective_names())})")
    return OBJECTIVES[cfg.name](cfg, threat)
