"""Fast paths for training, off by default: bf16 autocast and channels_last.

- ``bf16`` (``off`` | ``on`` | ``auto``): the training loss -- the objective's attack *and* the forward on the
  adversarial batch -- runs under ``torch.autocast(dtype=torch.bfloat16)``; the backward and the optimiser
  step stay float32 (bf16 keeps float32's exponent range, so no loss scaling is needed). The
  attack's iterate stays float32 and inside the ε-ball (projection in float32); only the
  gradients that steer it are computed in bf16. Validation and evaluation are never autocast.
- ``channels_last``: 4-D parameters of the model and every training batch are stored NHWC, the
  layout tensor cores prefer; the functions are unchanged (up to float rounding).

Both are measured, not assumed (``scripts/bench_speed.py --only accel``): on CPUs without bf16
units both are slower, which is why they are off by default. ``bf16: auto`` decides per run by
measuring (:func:`cmat.estimate.resolve_bf16`): training steps of the run's objective and network in float32
and under bf16 autocast on this device, interleaved (medians of 3); bf16 is used when it is at least
``AUTO_MIN_SPEEDUP`` faster. That bf16 training attacks do not weaken robustness is measured by
``scripts/bench_cost.py --only bf16`` (digits CMAT, worst-case robust accuracy fp32 vs bf16).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from cmat.config import bf16_mode


def autocast(cfg, device: torch.device, enabled=None):
    """The context the training loss is computed in: bf16 autocast when ``enabled`` (default:
    ``cfg.bf16`` is on; ``auto`` is resolved by :func:`cmat.estimate.resolve_bf16` before training)."""
    if enabled is None:
        enabled = bf16_mode(cfg.bf16) == "on"
    if not enabled:
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
