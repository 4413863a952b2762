"""The multi-head container: a shared feature extractor with per-task normalisation and heads,
and :class:`TaskView`, task j's classifier as a plain module."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cmat.nn.backbones import ARCHS, norm_layer_factory
from cmat.nn.layers import Normalize


class MultiHeadNet(nn.Module):
    """A shared feature extractor with one normalisation layer and one linear head per task.

    ``net(x, task)`` = ``heads[task](features(norms[task](x)))``. ``spec`` holds everything needed
    to rebuild the architecture (it is stored beside the weights; no pickle).
    """

    def __init__(self, arch: str, in_channels: int, input_size: int, head_sizes: Sequence[int],
                 means: Sequence[Sequence[float]], stds: Sequence[Sequence[float]], width: float = 1.0,
                 norm_layer: str = "batchnorm"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}")
        self.spec = {"arch": arch, "in_channels": int(in_channels), "input_size": int(input_size),
                     "head_sizes": [int(h) for h in head_sizes], "width": float(width),
                     "means": [list(map(float, m)) for m in means], "stds": [list(map(float, s)) for s in stds],
                     "norm_layer": norm_layer}
        self.features, self.feature_dim = ARCHS[arch](in_channels, width, nn.Conv2d, nn.Linear,
                                                      norm_layer_factory(norm_layer), input_size)
        self.norms = nn.ModuleList(Normalize(m, s) for m, s in zip(means, stds))
        self.heads = nn.ModuleList(nn.Linear(self.feature_dim, h) for h in head_sizes)

    def forward(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        return self.heads[task](self.features(self.norms[task](x)))

    def task_view(self, task: int) -> "TaskView":
        return TaskView(self, task)


class TaskView(nn.Module):
    """Task ``j``'s classifier as a plain module ``x ↦ logits`` (what attacks and users call)."""

    def __init__(self, net: MultiHeadNet, task: int):
        super().__init__()
        self.net = net
        self.task = int(task)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.task)

    def plain_equivalent(self) -> nn.Module:
        """A module of plain layers computing this view's eval-mode function, for attacks'
        input gradients (BN folding then applies): the masked network's export, else itself."""
        export = getattr(self.net, "plain_task_view", None)
        return export(self.task) if export is not None and not self.training else self
