"""Supermask methods on the masked network, with any training objective: SupSup and WSN.

Each task t selects a subnetwork of the shared masked backbone with edge-popup scores
(Ramanujan et al. 2020): per layer, the ``density`` fraction of its slice with the largest
``|score|``; forward ``W ⊙ M_t``, the scores learn through the straight-through gradient
``∂L/∂S = ∂L/∂W_t ⊙ W``. After the task, ``M_t`` is written in the owner/piggyback form every
masked layer stores (:meth:`cmat.nn.masked_layers.MaskedLayer.finish_scores`): t owns the
weights it selected that no earlier task owned, its piggyback bits are the earlier tasks'
weights it selected, the scores are dropped. Per-task BatchNorm, biases and heads (as every
masked method in cmat) train with the task.

- ``supsup`` (Wortsman et al. 2020, "Supermasks in superposition"): the weights are a fixed
  random network — scaled signed Kaiming constants ±sqrt(2 / (density · fan_in)) (edge-popup's
  best initialisation, Ramanujan et al. 2020 §4) — and are never trained; only scores (and
  the task's BN, biases and head) learn. ``density`` 0.5 (edge-popup's k = 50%), score
  learning rate 0.1 (SupSup's SGD).
- ``wsn`` (Kang et al. 2022, "Forget-free continual learning with winning subnetworks"): the
  weights a task selects that no earlier task uses train with the scores; weights used by an
  earlier task are frozen (they enter through ``W.detach()``). ``density`` (WSN's capacity c)
  0.5, the scores at the run's learning rate.

Zero forgetting is exact for both: a finished task's weights, bits, BN, biases and head never
change (``tests/test_supermask.py`` checks every earlier task bit for bit).
"""
from __future__ import annotations

import math

import torch

from cmat.methods import MaskedMethod, Option, register


class SupermaskMethod(MaskedMethod):
    """Shared by SupSup and WSN; subclasses set ``name``, ``train_weights`` and the defaults."""

    train_weights = True
    default_score_lr = None  # None: the run's learning rate
    options = {
        "density": Option(0.5, "fraction of each layer's weights a task's mask keeps", 1e-3, 1.0),
        "score_lr": Option(None, "learning rate of the edge-popup scores (None: SupSup 0.1, WSN train.lr)",
                           0.0, 1e3),
    }

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.density = self.opts["density"]
        default_lr = cfg.train.lr if self.default_score_lr is None else self.default_score_lr
        self.score_lr = default_lr if self.opts["score_lr"] is None else self.opts["score_lr"]
        self._freeze_weights()

    def _freeze_weights(self) -> None:
        if not self.train_weights:
            for m in self.net.masked_layers():
                m.weight.requires_grad_(False)

    def evaluations_of(self, j, n_tasks):
        return 1  # a finished task's subnetwork, BN and head never change

    def before_task(self, t, task):
        self.net.add_task(t, task.num_classes, task.mean, task.std, 1.0)
        for m in self.net.masked_layers():
            if not self.train_weights:
                self._signed_constant(m, self.layer(t))
            m.start_scores(self.layer(t), self.density)
        self._freeze_weights()

    @torch.no_grad()
    def _signed_constant(self, m, tid: int) -> None:
        """The weights task ``tid`` draws fresh (owned by it) become ±sqrt(2 / (density · fan_in))."""
        own, _ = m.region_masks(tid)
        out, inp = m.shapes[tid]
        fan_in = m.weight[0].numel()
        c = math.sqrt(2.0 / (self.density * fan_in))
        w = m.weight[:out, :inp]
        w[own] = torch.where(w[own] >= 0, c, -c)

    def train_task(self, t, task, trainer):
        wd = self.cfg.train.weight_decay
        layers = self.net.masked_layers()
        scores = [m.scores[str(self.layer(t))] for m in layers]
        ids = {id(p) for p in scores} | {id(m.weight) for m in layers}
        rest = [p for p in self.net.task_parameters(t) if id(p) not in ids]
        groups = [{"params": scores, "lr": self.score_lr, "weight_decay": 0.0},
                  {"params": rest, "weight_decay": wd}]
        after = None
        if self.train_weights:
            groups.append({"params": [m.weight for m in layers], "weight_decay": 0.0})
            after = lambda: self.net.owned_weight_decay(t, wd)  # noqa: E731
        trainer.fit(self.net.task_view(t), None, task, t, snapshot=self.net, param_groups=groups,
                    after_backward=after, tag="train")

    def after_task(self, t, task):
        for m in self.net.masked_layers():
            m.finish_scores(self.layer(t))
        used = [(int((m.owner > 0).sum()), m.owner.numel()) for m in self.net.masked_layers()]
        self.decisions.setdefault("tasks", []).append(
            {"task": t, "density": self.density,
             "capacity_used": sum(u for u, _ in used) / max(1, sum(n for _, n in used))})

    def restore(self, networks, decisions):
        super().restore(networks, decisions)
        self._freeze_weights()


@register
class SupSup(SupermaskMethod):
    """SupSup (Wortsman et al. 2020): a fixed random network, one learned supermask per task."""
    name = "supsup"
    train_weights = False
    default_score_lr = 0.1


@register
class WSN(SupermaskMethod):
    """WSN (Kang et al. 2022): a winning subnetwork per task, earlier tasks' weights frozen."""
    name = "wsn"
    train_weights = True
