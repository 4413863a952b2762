"""Fast paths for training, off by default: bf16 autocast and channels_last.

- ``bf16`` (``off`` | ``on`` | ``auto``): the training loss -- the objective's attack *and* the forward on the adversarial
  batch -- runs under ``torch.autocast(dtype=torch.bfloat16)``; the backward and the optimiser
  step stay float32 (bf16 keeps float32's exponent range, so no loss scaling is needed). The
  attack's iterate stays float32 and inside the ε-ball (projection in float32); only the
  gradients that steer it are computed in bf16. Validation and evaluation are never autocast.
- ``channels_last``: 4-D parameters of the model and every training batch are stored NHWC, the
  layout tensor cores prefer; the functions are unchanged (up to float rounding).

Both are measured, not assumed (``scripts/bench_speed.py --only accel``): on CPUs without bf16
units both are slower, which is why they are off by default. ``bf16: auto`` decides per run by
measuring (:func:`resolve_bf16`): training steps of the run's objective and network in float32
and under bf16 autocast on this device, interleaved (medians of 3); bf16 is used when it is at least
``AUTO_MIN_SPEEDUP`` faster. That bf16 training attacks do not weaken robustness is measured by
``scripts/bench_cost.py --only bf16`` (digits CMAT, worst-case robust accuracy fp32 vs bf16).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


AUTO_MIN_SPEEDUP = 1.1  # bf16 must be this much faster per training step for ``auto`` to pick it
REPEATS = 3  # interleaved fp32/bf16 measurements (each the fastest of 3 steps); medians compared


def bf16_mode(value) -> str:
    """``off``, ``on`` or ``auto`` from a config value (YAML booleans included); None if invalid."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    return {"true": "on", "on": "on", "yes": "on", "1": "on", "false": "off", "off": "off", "no": "off",
            "0": "off", "auto": "auto"}.get(text)


def autocast(cfg, device: torch.device, enabled=None):
    """The context the training loss is computed in: bf16 autocast when ``enabled`` (default:
    ``cfg.bf16`` is on; ``auto`` is resolved by :func:`resolve_bf16` before training)."""
    if enabled is None:
        enabled = bf16_mode(cfg.bf16) == "on"
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def resolve_bf16(cfg, task, device: torch.device, masked: bool = False) -> dict:
    """Whether training runs under bf16 autocast: ``{"bf16": bool, "mode": ...}``; for ``auto``
    also the measured seconds per pass in float32 and bf16 and their ratio ``speedup``."""
    mode = bf16_mode(cfg.accel.bf16)
    if mode != "auto":
        return {"bf16": mode == "on", "mode": mode}
    import statistics

    from cmat.estimate import measure_pass_seconds

    times = {False: [], True: []}
    for _ in range(REPEATS):  # interleaved, so a load change on a shared machine hits both alike
        for use in (False, True):
            times[use].append(measure_pass_seconds(cfg, task, device, masked=masked, bf16=use))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    speedup = fp32 / bf16
    return {"bf16": speedup >= AUTO_MIN_SPEEDUP, "mode": "auto", "fp32_pass_seconds": fp32,
            "bf16_pass_seconds": bf16, "speedup": speedup}


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
