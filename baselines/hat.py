"""HAT (Serra et al. 2018, "Overcoming catastrophic forgetting with hard attention to the task")
with any training objective, on :class:`cmat.nn.hat.HatNet`.

Task t learns a gate embedding ``e_t`` per unit; training uses ``a = σ(s · e_t)`` with ``s``
annealed linearly over each epoch's batches from 1/s_max to s_max (s_max = 400), the loss is the
objective's plus ``c · Σ a_t (1 − a_<t) / Σ (1 − a_<t)`` (c = 0.75: the share of units the task
takes that no earlier task uses, the paper's regulariser), and after every backward:

- a shared weight's gradient is multiplied by ``1 − min(a_<t[out unit], a_<t[in unit])``, a
  bias's by ``1 − a_<t[unit]`` (a_<t: the union of the earlier tasks' binary gates) — units both
  ends of which an earlier task uses are frozen;
- the embedding gradient is compensated for the annealing (×(s_max/s)·(cosh(s·e)+1)/(cosh(e)+1),
  cosh argument clamped at 50) and the embeddings are clamped to [−6, 6] after each step.

The embeddings train by plain SGD (no momentum), as in HAT's reference code: the compensation
and the clamp assume it (with Nesterov momentum 0.9 a task's gates could all close in the first
epochs and stay closed: a one-class network). Every other parameter takes the run's optimiser;
under ``train.optimizer: adam`` (the certified recipes) the embeddings take Adam too, whose
per-coordinate step size makes the compensation's scale moot. An attack inside training (PGD,
TRADES, …) runs in eval mode; it sees the soft gates σ(s·e) at the current s, the network the
loss trains (``HatNet.soft_gates``), not the hard gates validation uses.

Shared weights take no weight decay (it would move earlier tasks' weights); the task's BN and
head do. The run evaluates every task after every later task: HAT's forgetting is measured, not
assumed (with binary gates and blocked gradients it is zero up to the weights an earlier task
reaches only through gated-off units, which cannot change its outputs). Options
(``method_options``): ``smax`` (400), ``hat_c`` (0.75).
"""
from __future__ import annotations

import math

import torch

from cmat.errors import CmatError
from cmat.methods import OneNetwork, Option, register
from cmat.nn.hat import SEQUENTIAL_ARCHS, HatNet

THRES_COSH, THRES_EMB = 50.0, 6.0


@register
class HAT(OneNetwork):
    """HAT (Serra et al. 2018): per-task hard attention on units, earlier tasks' units frozen."""

    name = "hat"
    options = {
        "smax": Option(400.0, "s_max, the final sharpness of the gates σ(s·e)", 1.0, 1e6),
        "hat_c": Option(0.75, "c, weight of the attention-sparsity regulariser", 0.0, 1e3),
    }

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        if cfg.model.arch not in SEQUENTIAL_ARCHS:
            raise CmatError(f"hat needs a sequential backbone ({', '.join(SEQUENTIAL_ARCHS)}); "
                            f"--arch {cfg.model.arch} is not one")
        c, h, _ = seq[0].input_shape
        self.net = HatNet(cfg.model.arch, c, h, cfg.model.width).to(self.device)
        self.smax, self.c = self.opts["smax"], self.opts["hat_c"]
        self.used: dict = {}  # gate index -> bool tensor, union of the finished tasks' gates

    def before_task(self, t, task):
        self.net.add_task(t, task.num_classes, task.mean, task.std)
        self.net.to(self.device)

    def _union(self, i: int, gate) -> torch.Tensor:
        return self.used.get(i, torch.zeros(gate.n, dtype=torch.bool, device=self.device))

    def _loss_fn(self, t, trainer, batches_per_epoch: int):
        gates = self.net.gates()
        step = [0]

        def loss_fn(model, x, y, gen):
            b = step[0] % batches_per_epoch
            step[0] += 1
            s = 1 / self.smax + (self.smax - 1 / self.smax) * b / max(1, batches_per_epoch - 1)
            with self.net.soft_gates(s):  # the training attack sees the gates the loss trains
                loss, logits = trainer.objective.loss(model, x, y, gen)
            num, den = 0.0, 0.0
            for i, g in enumerate(gates):
                free = (~self._union(i, g)).float()
                num = num + (torch.sigmoid(s * g.emb[str(t)]) * free).sum()
                den = den + free.sum()
            return loss + self.c * num / max(float(den), 1.0), logits

        return loss_fn

    @torch.no_grad()
    def _after_backward(self, t):
        gates = self.net.gates()
        index = {id(g): i for i, g in enumerate(gates)}
        for layer, gate, prev in self.net.weight_layers():
            out_used = self._union(index[id(gate)], gate).float()
            if layer.weight.grad is not None:
                if prev is None:
                    block = out_used.view((-1,) + (1,) * (layer.weight.dim() - 1)).expand_as(layer.weight)
                else:
                    in_used = self._union(index[id(prev)], prev).float()
                    reps = layer.weight.shape[1] // in_used.numel()  # features per channel after a flatten
                    in_used = in_used.repeat_interleave(reps)
                    shape = (1, -1) + (1,) * (layer.weight.dim() - 2)
                    block = torch.minimum(out_used.view((-1,) + (1,) * (layer.weight.dim() - 1)),
                                          in_used.view(shape))
                layer.weight.grad.mul_(1 - block)
            if layer.bias is not None and layer.bias.grad is not None:
                layer.bias.grad.mul_(1 - out_used)
        for g in gates:
            e = g.emb[str(t)]
            if e.grad is not None:
                num = torch.cosh(torch.clamp(g.s * e, -THRES_COSH, THRES_COSH)) + 1
                e.grad.mul_(self.smax / g.s * num / (torch.cosh(e) + 1))

    @torch.no_grad()
    def _after_step(self, t):
        for g in self.net.gates():
            g.emb[str(t)].clamp_(-THRES_EMB, THRES_EMB)

    def param_groups(self, t: int) -> list:
        """Task t's optimiser groups: shared weights (no weight decay), gate embeddings (plain
        SGD, as HAT's reference code: its compensation and clamp assume no momentum), and the
        task's own BN and head (the run's weight decay)."""
        shared = [p for layer, _, _ in self.net.weight_layers() for p in layer.parameters()]
        embs = [g.emb[str(t)] for g in self.net.gates()]
        ids = {id(p) for p in shared + embs}
        own = [p for name, p in self.net.named_parameters()
               if id(p) not in ids and (f"bns.{t + 1}." in name or name.startswith(f"heads.{t}."))]
        return [{"params": shared, "weight_decay": 0.0},
                {"params": embs, "weight_decay": 0.0, "momentum": 0.0, "nesterov": False},
                {"params": own, "weight_decay": self.cfg.train.weight_decay}]

    def train_task(self, t, task, trainer):
        groups = self.param_groups(t)
        # loss_fn calls per epoch: batches × the objective's replays (free AT replays each batch)
        per_epoch = math.ceil(len(task.train) / self.cfg.train.batch_size) * trainer.objective.replays
        trainer.fit(self.net.task_view(t), None, task, t, snapshot=self.net, param_groups=groups,
                    loss_fn=self._loss_fn(t, trainer, per_epoch), after_backward=lambda: self._after_backward(t),
                    after_step=lambda: self._after_step(t), tag="train")

    def after_task(self, t, task):
        gates = self.net.gates()
        for i, g in enumerate(gates):
            g.finish(t)
            self.used[i] = self._union(i, g) | g.buffer(t).to(self.device)
        units = sum(g.n for g in gates)
        self.decisions.setdefault("tasks", []).append(
            {"task": t, "units_used": sum(int(g.buffer(t).sum()) for g in gates) / units,
             "units_used_by_any_task": sum(int(u.sum()) for u in self.used.values()) / units})

    def restore(self, networks, decisions):
        super().restore(networks, decisions)
        self.used = {}
        for i, g in enumerate(self.net.gates()):
            for e in self.net.spec["tasks"]:
                self.used[i] = self._union(i, g) | g.buffer(e["task"]).to(self.device)
