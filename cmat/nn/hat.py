"""HAT's network (Serra et al. 2018, "Overcoming catastrophic forgetting with hard attention to
the task"): a plain backbone whose units are gated per task, with per-task normalisation,
BatchNorm and heads.

Every unit (a channel of a convolution, a feature of a fully connected layer) gets a gate per
task: while task t trains, ``a = σ(s · e_t)`` of a learned embedding ``e_t`` with the scale ``s``
annealed by the method — in train mode and inside :meth:`HatNet.soft_gates`, which the method
wraps around each loss so that a training attack (run in eval mode) sees the gates the loss
trains; in eval mode otherwise (validation) ``1[e_t > 0]``; once t is finished its gates are fixed to
``a_t = 1[e_t > 0]`` (what ``σ(s_max · e_t)`` tends to; ``s_max`` = 400 leaves them within 1e-3 of 0/1 anyway), kept as
bool buffers — the store keeps them bit-packed — and the embeddings are dropped.

A gate sits right after the unit's BatchNorm when it has one, else right after the
convolution / linear layer; since the gate is ≥ 0 and a ReLU follows, gating there equals
gating the unit's activation (a gated-off unit outputs exactly 0, whatever BN's shift).
Supported backbones are the sequential ones (smallcnn, cnn-ibp, vgg16, mlp).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from cmat.nn.backbones import ARCHS
from cmat.nn.layers import ChannelScale, Normalize
from cmat.nn.masked_layers import TaskBatchNorm2d
from cmat.nn.multihead import TaskView

SEQUENTIAL_ARCHS = ("smallcnn", "cnn-ibp", "vgg16", "mlp")


class UnitGate(nn.Module):
    """Per-task gates of ``n`` units: ``x · a_t`` over the channel (or feature) dimension."""

    def __init__(self, n: int):
        super().__init__()
        self.n = int(n)
        self.emb = nn.ParameterDict()  # the embedding of the task being trained
        self.task = 0
        self.s = 1.0  # the annealed scale σ(s · e) uses while training
        self.soft = False  # soft gates in eval mode too (HatNet.soft_gates: a training attack)

    def add_task(self, t: int) -> None:
        self.register_buffer(f"gate{t}", torch.zeros(self.n, dtype=torch.bool))
        self.emb[str(t)] = nn.Parameter(torch.randn(self.n, device=self.buffer(t).device))

    def buffer(self, t: int) -> torch.Tensor:
        return getattr(self, f"gate{t}")

    @torch.no_grad()
    def finish(self, t: int) -> None:
        """Fix task t's gates to ``1[e_t > 0]`` and drop its embedding."""
        self.buffer(t).copy_(self.emb[str(t)] > 0)
        del self.emb[str(t)]

    def gate(self, t: int) -> torch.Tensor:
        """Task t's gates as floats: soft while it trains (train mode or ``soft``), hard in eval
        mode otherwise and once finished."""
        if str(t) in self.emb:
            e = self.emb[str(t)]
            return torch.sigmoid(self.s * e) if self.training or self.soft else (e > 0).to(e.dtype)
        return self.buffer(t).float()

    def channel_scale(self) -> torch.Tensor:
        """The current task's gate (the bounds of :mod:`cmat.bounds` treat it as a channel scale)."""
        return self.gate(self.task)

    def bound_layers(self) -> list:
        """The current task's gate as a channel scale for :mod:`cmat.bounds`."""
        return [ChannelScale(self.channel_scale())]

    def forward(self, x):
        g = self.gate(self.task).to(x.dtype)
        return x * g.view((1, -1) + (1,) * (x.dim() - 2))


def gated_features(arch: str, in_channels: int, width: float, input_size: int) -> tuple:
    """``(features, feature_dim)``: the backbone with a :class:`UnitGate` after each BN, or after
    each convolution / linear layer that no BN follows."""
    if arch not in SEQUENTIAL_ARCHS:
        raise ValueError(f"hat needs a sequential backbone ({', '.join(SEQUENTIAL_ARCHS)}), not {arch!r}")
    plain, dim = ARCHS[arch](in_channels, width, nn.Conv2d, nn.Linear, TaskBatchNorm2d, input_size)
    mods = list(plain)
    out = []
    for i, m in enumerate(mods):
        out.append(m)
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, TaskBatchNorm2d):
            out.append(UnitGate(m.base))
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(nxt, TaskBatchNorm2d):
            out.append(UnitGate(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features))
    return nn.Sequential(*out), dim


class HatNet(nn.Module):
    """The gated backbone shared by all tasks, per-task normalisation, BN and heads.
    ``net(x, t)``: task t's classifier; ``spec`` rebuilds it (the gates are in the state dict)."""

    def __init__(self, arch: str, in_channels: int, input_size: int, width: float = 1.0):
        super().__init__()
        self.features, self.feature_dim = gated_features(arch, in_channels, width, input_size)
        self.norms = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.spec = {"arch": arch, "in_channels": int(in_channels), "input_size": int(input_size),
                     "width": float(width), "hat": True, "tasks": []}

    def gates(self) -> list:
        return [m for m in self.features if isinstance(m, UnitGate)]

    @contextlib.contextmanager
    def soft_gates(self, s: float):
        """Inside: every gate of the task being trained is ``σ(s · e)``, in eval mode too (a
        training attack puts the net in eval mode); ``s`` stays set after (the embedding-gradient
        compensation reads it)."""
        gates = self.gates()
        for g in gates:
            g.s, g.soft = s, True
        try:
            yield
        finally:
            for g in gates:
                g.soft = False

    def weight_layers(self) -> list:
        """``(layer, its gate, the gate of its inputs or None)`` in order: what HAT's gradient
        rule needs (a weight is frozen where both its units are used by an earlier task)."""
        out, prev, pending = [], None, None
        for m in self.features:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                pending = m
            elif isinstance(m, UnitGate) and pending is not None:
                out.append((pending, m, prev))
                prev, pending = m, None
        return out

    def add_task(self, t: int, num_classes: int, mean, std) -> None:
        dev = next(self.features.parameters()).device
        for m in self.features:
            if isinstance(m, TaskBatchNorm2d):
                m.add_task(t + 1, 1.0)
            elif isinstance(m, UnitGate):
                m.add_task(t)
        self.features.to(dev)
        self.norms[str(t)] = Normalize(mean, std).to(dev)
        self.heads[str(t)] = nn.Linear(self.feature_dim, num_classes).to(dev)
        self.spec["tasks"] = [e for e in self.spec["tasks"] if e["task"] != t] + [
            {"task": t, "num_classes": int(num_classes), "mean": list(map(float, mean)), "std": list(map(float, std))}]

    def set_task(self, t: int) -> None:
        for m in self.features:
            if isinstance(m, TaskBatchNorm2d):
                m.task = t + 1
            elif isinstance(m, UnitGate):
                m.task = t

    def forward(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        self.set_task(task)
        return self.heads[str(task)](self.features(self.norms[str(task)](x)))

    def task_view(self, task: int) -> TaskView:
        return TaskView(self, task)
