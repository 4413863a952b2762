"""Training objectives: how one minibatch becomes a loss.

The engine owns the optimiser; for each minibatch (replayed ``objective.replays`` times) it
calls ``loss, logits = objective.loss(model, x, y, generator)``, then ``loss.backward()``,
the method's gradient hooks, ``objective.after_backward()`` (gradient clipping comes last) and ``optimizer.step()``.
``model`` is task t's classifier ``x ↦ logits`` in train mode; ``x`` is in [0, 1].

This module: the contract, the :class:`Objective` base class and the registry. Objectives
(:mod:`cmat.objectives.adversarial`, :mod:`cmat.objectives.certified`):

- ``standard``: CE(f(x), y).
- ``pgd`` (Madry et al. 2018): CE(f(x_adv), y), x_adv = PGD-K (random start, ε, α).
- ``trades`` (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)), x_adv maximises the KL
  from x + 0.001·N(0, I); β = 6.
- ``fast`` (Wong et al. 2020): CE(f(x_adv)), x_adv = FGSM from a uniform random start with
  α = 1.25ε. ``detects_collapse``: the engine checks validation PGD accuracy each epoch and stops
  (keeping the best state) on catastrophic overfitting.
- ``ibp`` / ``crown-ibp`` (Gowal et al. 2018; Zhang et al. 2020): certified training on bound-
  based worst-case logits, see :mod:`cmat.objectives.certified`.
- ``free`` (Shafahi et al. 2019): each minibatch replayed m times; one backward gives both the
  parameter gradient and the input gradient; δ ← Π_ε(δ + ε·sign(∇_δ)) is carried across replays
  and minibatches. The engine divides the epochs by m.
``objective.eps_ramp`` (pgd, trades, fast; 0 = off): the training attack's ε and α are scaled by
r = min(1, step / (eps_ramp · phase iterations)), so the first iteration trains on the clean batch
and the ball reaches ε after that share of a fresh phase (warm phases start at ε); an mlp trained
with the full ball from the first step can stay at chance (the MNIST presets, measured).
Training attacks never update BN running statistics: they are generated in eval mode
(``bn="eval"``, the default) or with batch statistics and running-stat updates suppressed
(``bn="batch"``).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Optional

import torch
from torch import nn

from cmat.config import ObjectiveConfig, ThreatConfig
from cmat.distributed import unwrap
from cmat.errors import CmatError

OBJECTIVES: dict = {}  # name -> Objective subclass, filled by register_objective


def register_objective(cls):
    """Class decorator: register an :class:`Objective` subclass under ``cls.name``."""
    OBJECTIVES[cls.name] = cls
    return cls


def objective_names() -> list:
    """Every registered objective (``import cmat.objectives`` registers the built-in ones)."""
    return list(OBJECTIVES)


def make_objective(cfg: ObjectiveConfig, threat: ThreatConfig) -> "Objective":
    """The objective named ``cfg.name`` for this threat model (one-line error if unknown)."""
    if cfg.name not in OBJECTIVES:
        raise CmatError(f"unknown objective {cfg.name!r} (valid: {', '.join(objective_names())})")
    return OBJECTIVES[cfg.name](cfg, threat)


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
    supports_ddp = False  # the loss is one forward of the model per backward (torchrun can wrap it)
    certified = False  # trains for certificates (a preset's ``certified:`` block applies)
    certificate: Optional[str] = None  # the bound behind the validation metric, if any
    selection: Optional[str] = None  # the model-selection rule it imposes ("last"), if any

    def __init__(self, cfg: ObjectiveConfig, threat: ThreatConfig):
        self.cfg = cfg
        self.eps = float(threat.eps)
        self.alpha = float(threat.alpha)
        self.total_iters = 1  # iterations of the current phase (set by the trainer)
        self.step = 0  # iterations of the current phase so far
        self.warm = False

    def ramp(self) -> float:
        """r ∈ [0, 1], the share of ε (and α) the training attack uses at this iteration:
        r = step / (eps_ramp · total_iters), capped at 1; 1 when ``eps_ramp`` is 0 or the
        phase is warm. Advances the iteration count."""
        frac = float(getattr(self.cfg, "eps_ramp", 0.0) or 0.0)
        r = 1.0 if self.warm or frac <= 0 else min(self.step / (frac * max(self.total_iters, 1)), 1.0)
        self.step += 1
        return r

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

    def reset(self, warm: bool = False) -> None:
        """Forget state carried across minibatches (called when a training phase starts);
        ``warm``: the phase continues a model already trained on this task (growth,
        compaction, PackNet's retraining), so schedules that ramp up from scratch start at
        their final values."""
        self.step = 0
        self.warm = warm

    def describe(self) -> dict:
        return {"name": self.name, "eps": self.eps, "alpha": self.alpha}
