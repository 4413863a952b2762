"""The normalisation layer every network starts with (pixel-space threat model)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the model's first layer (pixel-space threat model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ChannelScale(nn.Module):
    """``x · scale`` per channel: a method's gate or mask exported as a plain layer (the form
    the bounds read, :meth:`bound_layers` of HAT's and ANP-VS's layers)."""

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.scale = scale  # kept as given (a training bound differentiates through it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view((1, -1) + (1,) * (x.dim() - 2))


def carrying(layer: nn.Module, weight: torch.Tensor, bias) -> nn.Module:
    """``layer`` (built on the meta device) computing with ``weight``/``bias`` as they are, autograd
    graph included (a training bound differentiates through them); not a module to train."""
    del layer._parameters["weight"]
    layer._parameters.pop("bias", None)
    layer.weight, layer.bias = weight, bias
    return layer
