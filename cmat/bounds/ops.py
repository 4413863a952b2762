"""A task classifier as a list of operations the bounds understand.

Affine operations (Normalize, Conv2d, Linear, BatchNorm in eval mode, average pooling, Flatten,
ANP-VS's test-time channel mask) implement ``forward`` (A x + b), ``linear`` (A x),
``abs_linear`` (|A| r, for interval radii), ``vjp`` (Λ A) and ``bias_term`` (Λ·b); ReLU and
MaxPool are markers. :func:`network_ops` flattens a model (a ``TaskView`` of a plain or masked
network, a transfer model with ``verify_parts()``, or a plain ``nn.Sequential``) into this
list; normalisation stays its own affine operation at the front (folding it into a *padded*
first convolution would change the function at the image borders).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmat.errors import CmatError
from cmat.nn.layers import ChannelScale, Normalize
from cmat.nn.multihead import TaskView


class Affine(ABC):
    """An affine map ``x ↦ A x + b``; ``linear`` applies A, ``abs_linear`` applies |A|."""

    @abstractmethod
    def forward(self, x):
        """A x + b."""

    @abstractmethod
    def linear(self, x):
        """A x."""

    @abstractmethod
    def abs_linear(self, r):
        """|A| r (for interval radii)."""

    def vjp(self, lam: torch.Tensor, in_shape: tuple) -> torch.Tensor:
        """``Λ A`` for Λ of shape (N, K, *out_shape): the rows pulled back to the input."""
        n, k = lam.shape[:2]
        train = torch.is_grad_enabled()  # training bounds: the result must stay differentiable
        x = torch.zeros((n * k,) + tuple(in_shape), dtype=lam.dtype, device=lam.device, requires_grad=True)
        with torch.enable_grad():
            y = self.linear(x)
            (g,) = torch.autograd.grad(y, x, grad_outputs=lam.reshape((n * k,) + tuple(y.shape[1:])),
                                       create_graph=train)
        return g.reshape((n, k) + tuple(in_shape))

    def bias_term(self, lam: torch.Tensor, in_shape: tuple) -> torch.Tensor:
        """Λ·b per row: (N, K)."""
        b = self.forward(torch.zeros((1,) + tuple(in_shape), dtype=lam.dtype, device=lam.device))
        return (lam * b.unsqueeze(1)).flatten(2).sum(2)


@dataclass
class Conv(Affine):
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: tuple
    padding: tuple

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def linear(self, x):
        return F.conv2d(x, self.weight, None, self.stride, self.padding)

    def abs_linear(self, r):
        return F.conv2d(r, self.weight.abs(), None, self.stride, self.padding)


@dataclass
class Dense(Affine):
    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def linear(self, x):
        return F.linear(x, self.weight)

    def abs_linear(self, r):
        return F.linear(r, self.weight.abs())


@dataclass
class ChannelAffine(Affine):
    """y = scale·x + shift per channel (Normalize, eval-mode BatchNorm, a fixed channel mask)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def _v(self, t, x):
        return t.view((1, -1) + (1,) * (x.dim() - 2))

    def forward(self, x):
        return x * self._v(self.scale, x) + self._v(self.shift, x)

    def linear(self, x):
        return x * self._v(self.scale, x)

    def abs_linear(self, r):
        return r * self._v(self.scale.abs(), r)


@dataclass
class AvgPool(Affine):
    output_size: tuple

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    linear = forward
    abs_linear = forward


class Flatten(Affine):
    def forward(self, x):
        return x.flatten(1)

    linear = forward
    abs_linear = forward


class ReLU:
    pass


@dataclass
class MaxPool:
    module: nn.MaxPool2d


def bn_affine(bn: nn.BatchNorm2d, live: Optional[dict] = None) -> ChannelAffine:
    """Eval-mode BN as a per-channel affine map; with ``live`` (training bounds), the batch
    statistics recorded for ``bn`` in ``live`` when there are any, and no detaching."""
    mean, var = live[bn] if live is not None and bn in live else (bn.running_mean, bn.running_var)
    inv = 1 / torch.sqrt(var + bn.eps)
    scale = bn.weight * inv if bn.affine else inv
    shift = (bn.bias if bn.affine else 0) - mean * scale
    if live is None:
        return ChannelAffine(scale.detach(), shift.detach())
    return ChannelAffine(scale, shift)


def flatten_module(m: nn.Module, ops: list, live: Optional[dict] = None) -> None:
    """Append ``m``'s operations to ``ops``. ``live=None``: verification (weights detached, BN
    with running statistics); a dict: training bounds (differentiable weights, BN layers found
    in the dict with the batch statistics recorded there)."""
    def d(t):
        return None if t is None else (t if live is not None else t.detach())

    export = getattr(m, "bound_layers", None)  # a method's layer exports itself as plain layers
    if callable(export):
        for c in export():
            flatten_module(c, ops, live)
    elif isinstance(m, nn.Sequential):
        for c in m:
            flatten_module(c, ops, live)
    elif isinstance(m, Normalize):
        ops.append(ChannelAffine((1 / m.std).flatten(), (-m.mean / m.std).flatten()))
    elif isinstance(m, ChannelScale):
        ops.append(ChannelAffine(d(m.scale), torch.zeros_like(m.scale)))
    elif isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.dilation != (1, 1) or isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise CmatError(f"verify: unsupported convolution {m}")
        ops.append(Conv(d(m.weight), d(m.bias), m.stride, m.padding))
    elif isinstance(m, nn.Linear):
        ops.append(Dense(d(m.weight), d(m.bias)))
    elif isinstance(m, nn.BatchNorm2d):
        ops.append(bn_affine(m, live))
    elif isinstance(m, nn.ReLU):
        ops.append(ReLU())
    elif isinstance(m, nn.MaxPool2d):
        ops.append(MaxPool(m))
    elif isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
        ops.append(AvgPool(size))
    elif isinstance(m, nn.AvgPool2d):
        raise CmatError("verify: fixed-window AvgPool2d is not supported (use AdaptiveAvgPool2d)")
    elif isinstance(m, nn.Flatten):
        ops.append(Flatten())
    elif isinstance(m, (nn.Dropout, nn.Identity)):
        pass
    else:
        raise CmatError(f"verify: cannot bound layer {type(m).__name__} ({m.__class__.__module__}); supported: "
                        "Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d, Flatten")


def network_ops(model: nn.Module, live: Optional[dict] = None) -> list:
    """The operation list of a task classifier (a ``TaskView``, a transfer model or a plain
    ``nn.Sequential``). Verification (``live=None``) puts the model in eval mode; training
    bounds (``live`` = recorded BN batch statistics, see :mod:`cmat.objectives.certified`) leave it as is."""
    if live is None:
        model.eval()
    ops: list = []
    if isinstance(model, TaskView):
        net, t = model.net, model.task
        if hasattr(net, "set_task"):
            net.set_task(t)
            flatten_module(net.norms[str(t)], ops, live)
            flatten_module(net.features, ops, live)
            flatten_module(net.heads[str(t)], ops, live)
        else:
            flatten_module(net.norms[t], ops, live)
            flatten_module(net.features, ops, live)
            flatten_module(net.heads[t], ops, live)
    elif hasattr(model, "verify_parts"):  # e.g. cmat.transfer.TransferModel
        for part in model.verify_parts():
            flatten_module(part, ops, live)
    else:
        flatten_module(model, ops, live)
    return ops


def run_ops(ops: list, x: torch.Tensor) -> torch.Tensor:
    """The network's function, evaluated through its operation list."""
    for op in ops:
        if isinstance(op, ReLU):
            x = F.relu(x)
        elif isinstance(op, MaxPool):
            x = op.module(x)
        else:
            x = op.forward(x)
    return x
