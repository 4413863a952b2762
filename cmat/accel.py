"""GPU fast paths for training, off by default: bf16 autocast and channels_last.

- ``bf16``: the training loss -- the objective's attack *and* the forward on the adversarial
  batch -- runs under ``torch.autocast(dtype=torch.bfloat16)``; the backward and the optimiser
  step stay float32 (bf16 keeps float32's exponent range, so no loss scaling is needed). The
  attack's iterate stays float32 and inside the ε-ball (projection in float32); only the
  gradients that steer it are computed in bf16. Validation and evaluation are never autocast.
- ``channels_last``: 4-D parameters of the model and every training batch are stored NHWC, the
  layout tensor cores prefer; the functions are unchanged (up to float rounding).

Both are measured, not assumed (``scripts/bench_speed.py --only accel``): on CPUs without bf16
units both are slower, which is why they are off by default.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast(cfg, device: torch.device):
    """The context the training loss is computed in: bf16 autocast when ``cfg.bf16``."""
    if not cfg.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prepare_model(cfg, model: nn.Module) -> nn.Module:
    """Convert ``model``'s 4-D parameters and buffers to channels_last in place when asked."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def prepare_batch(cfg, x: torch.Tensor) -> torch.Tensor:
    """A training batch in the configured memory format."""
    if cfg.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
