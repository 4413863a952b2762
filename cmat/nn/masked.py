"""The masked multi-task network: a masked backbone shared by all tasks (layers in
:mod:`cmat.nn.masked_layers`, mask algebra in :mod:`cmat.nn.mask_algebra`) with per-task
normalisation, BatchNorm, biases, heads and width; pruning and ownership at network level.
"""
from __future__ import annotations

import torch
from torch import nn

from cmat.nn.backbones import ARCHS
from cmat.nn.fuse import foldable_pairs, with_replaced
from cmat.nn.layers import Normalize
from cmat.nn.mask_algebra import PIGGY_INIT, PIGGY_THRESHOLD, PackedBits  # noqa: F401 (public re-export)
from cmat.nn.masked_layers import MaskedConv2d, MaskedLayer, MaskedLinear, PlainTaskNet, TaskBatchNorm2d  # noqa: F401
from cmat.nn.multihead import TaskView


class MaskedMultiHeadNet(nn.Module):
    """A masked backbone shared by all tasks, with per-task normalisation, BN, biases, heads
    and width. ``net(x, t)`` evaluates task t exactly as it was learned.

    Tasks are 0-based here (``t``); the layers see owner id ``t + 1`` (0 means free).
    ``add_task(t, num_classes, mean, std, multiplier)`` registers task t at channel multiplier
    ``multiplier`` (≥ every earlier task's: growth only widens); free weights in t's slice
    become t's. ``spec`` plus the state dict plus the mask tensors rebuild the network.
    """
    @staticmethod
    def layer_id(t: int) -> int:
        """The owner id the masked layers use for network task t (0 means free): t + 1."""
        return t + 1

    def __init__(self, arch: str, in_channels: int, input_size: int, width: float = 1.0):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}")
        self.features, self.base_feature_dim = ARCHS[arch](in_channels, width, MaskedConv2d, MaskedLinear,
                                                           TaskBatchNorm2d, input_size)
        layers = self.masked_layers()
        layers[0].fixed_in = True
        for prev, layer in zip(layers, layers[1:]):
            if isinstance(layer, MaskedLinear) and isinstance(prev, MaskedConv2d):
                layer.in_group = layer.base_in // prev.base_out
        self.norms = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.multipliers: dict = {}
        self._fold_pairs = None  # conv→BN pairs of the plain export (same for every task)
        self.spec = {"arch": arch, "in_channels": int(in_channels), "input_size": int(input_size),
                     "width": float(width), "masked": True, "tasks": []}

    def masked_layers(self) -> list:
        return [m for m in self.features.modules() if isinstance(m, MaskedLayer)]

    def task_modules(self) -> list:
        return [m for m in self.features.modules() if isinstance(m, (MaskedLayer, TaskBatchNorm2d))]

    def feature_dim(self, t: int) -> int:
        return self.masked_layers()[-1].shapes[self.layer_id(t)][0]

    def add_task(self, t: int, num_classes: int, mean, std, multiplier: float = 1.0) -> None:
        for m in self.task_modules():
            m.add_task(self.layer_id(t), multiplier)
        dev = self.masked_layers()[0].weight.device
        self.multipliers[t] = float(multiplier)
        self.norms[str(t)] = Normalize(mean, std).to(dev)
        head = nn.Linear(self.feature_dim(t), num_classes).to(dev)
        if str(t) in self.heads:  # widening: keep the learned columns, new inputs start at 0
            old = self.heads[str(t)]
            with torch.no_grad():
                head.weight.zero_()
                head.weight[:, : old.in_features] = old.weight
                head.bias.copy_(old.bias)
        self.heads[str(t)] = head
        entry = {"task": t, "num_classes": int(num_classes), "multiplier": float(multiplier),
                 "mean": list(map(float, mean)), "std": list(map(float, std))}
        self.spec["tasks"] = [e for e in self.spec["tasks"] if e["task"] != t] + [entry]

    def set_task(self, t: int) -> None:
        for m in self.task_modules():
            m.task = self.layer_id(t)

    def forward(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        self.set_task(task)
        return self.heads[str(task)](self.features(self.norms[str(task)](x)))

    def task_view(self, task: int):
        return TaskView(self, task)

    @torch.no_grad()
    def plain_task_view(self, task: int) -> nn.Module:
        """Task ``task``'s eval-mode classifier built from plain layers: every masked layer
        becomes an ``nn.Conv2d``/``nn.Linear`` holding its effective weight (the cached tensor,
        not a copy; ``requires_grad=False``) and every task BN the task's ``nn.BatchNorm2d``. It
        computes exactly what ``net(x, task)`` computes in eval mode and is a snapshot: build it
        inside one attack call, after the weights last changed. Attacks fold BN into it."""
        tid = task + 1
        replace = {}
        for name, m in self.features.named_modules():
            if isinstance(m, MaskedLayer):
                replace[name] = m.plain_layer(tid)
            elif isinstance(m, TaskBatchNorm2d):
                replace[name] = m.bns[str(tid)]
        net = PlainTaskNet(self.norms[str(task)], with_replaced(self.features, replace, ""),
                            self.heads[str(task)])
        if self._fold_pairs is None and not self.training:  # eval exports share one layout: trace once
            self._fold_pairs = foldable_pairs(net)
        if not self.training:
            net.foldable_pairs = self._fold_pairs
        return net

    def task_parameters(self, t: int) -> list:
        """Parameters that training task t may change: the shared weights (gradients only on
        t's entries), t's biases, BN, head; piggyback masks are separate."""
        params = [m.weight for m in self.masked_layers()]
        for m in self.masked_layers():
            if m.biases is not None:
                params.append(m.biases[str(self.layer_id(t))])
        for m in self.features.modules():
            if isinstance(m, TaskBatchNorm2d):
                params += list(m.bns[str(self.layer_id(t))].parameters())
        params += list(self.heads[str(t)].parameters())
        return params

    # ----- capacity ---------------------------------------------------------------------
    def owned_weight_decay(self, t: int, weight_decay: float) -> None:
        """Add ``weight_decay · W`` to the gradient of task t's own weights only (call after
        backward; the optimiser's own weight decay must be 0 for the shared weights)."""
        if weight_decay == 0:
            return
        for m in self.masked_layers():
            if m.weight.grad is not None:
                m.weight.grad.addcmul_(m.weight.detach(), m.owned_float(self.layer_id(t)), value=weight_decay)

    @staticmethod
    @torch.no_grad()
    def _release_smallest(m: MaskedLayer, tid: int, k: int) -> None:
        """Release the ``k`` smallest-magnitude weights owned by ``tid``: owner → 0, weight → 0."""
        if k <= 0:
            return
        own_idx = (m.owner == tid).flatten().nonzero().squeeze(1)
        mags = m.weight.detach().abs().flatten()[own_idx]
        drop = own_idx[torch.topk(mags, k, largest=False).indices]
        m.owner.view(-1)[drop] = 0
        m.weight.view(-1)[drop] = 0.0
        m.invalidate()

    def prune_to(self, t: int, sparsity: float, initial: list) -> None:
        """Release task t's smallest weights until, in every layer, ``sparsity`` of the
        ``initial[i]`` weights it owned before compaction are released (cumulative)."""
        for m, n0 in zip(self.masked_layers(), initial):
            owned = int((m.owner == self.layer_id(t)).sum())
            self._release_smallest(m, self.layer_id(t), int(round(sparsity * n0)) - (n0 - owned))

    def prune_owned(self, t: int, fraction: float) -> dict:
        """Release the smallest-magnitude ``fraction`` of task t's weights in every layer (so
        later tasks find them free). Returns per-layer ``(released, owned before)``."""
        counts = {}
        for i, m in enumerate(self.masked_layers()):
            n = int((m.owner == self.layer_id(t)).sum())
            k = int(round(fraction * n))
            self._release_smallest(m, self.layer_id(t), k)
            counts[i] = (k, n)
        return counts

    def param_groups(self, t: int, weight_decay: float) -> list:
        """SGD groups for training task t: the shared weights without optimiser weight decay
        (apply :meth:`owned_weight_decay` after backward instead) and t's own biases, BN and
        head with it."""
        shared = [m.weight for m in self.masked_layers()]
        ids = {id(p) for p in shared}
        rest = [p for p in self.task_parameters(t) if id(p) not in ids]
        return [{"params": shared, "weight_decay": 0.0}, {"params": rest, "weight_decay": weight_decay}]

    def ownership(self) -> list:
        """Per masked layer: ``{owner id: count}`` over the physical weight tensor."""
        out = []
        for m in self.masked_layers():
            ids, counts = torch.unique(m.owner, return_counts=True)
            out.append({int(i): int(c) for i, c in zip(ids, counts)})
        return out
