"""Masked multi-task layers: one shared weight tensor, an integer owner tensor, per-task masks.

For task t a masked layer uses the slice ``[:out_t, :in_t]`` of its weight (its width when it
was learned) and the effective weight::

    W_t = W ⊙ [(O == t) ∨ (0 < O < t ∧ P_t)]

where ``O`` is the owner tensor (0 = free, k = owned by task k) and ``P_t`` the binary
piggyback mask of task t. While task t trains, ``P_t = 1[m_t > 5e-3]`` of a real-valued mask
``m_t`` (initialised 1e-2) with a straight-through gradient. A task without a piggyback mask
(PackNet) uses every weight of earlier tasks (``P_t ≡ 1``). A task with supermask scores ``S_t``
(SupSup, WSN) uses ``W ⊙ top_fraction(S_t)`` over its whole slice while it trains, and is then
written in the same owner/piggyback form (:meth:`MaskedLayer.finish_scores`).

Gradient rules, by construction: the gradient of ``W`` is non-zero only where ``O == t`` (other
weights enter through ``W.detach()``), so earlier tasks' weights and released weights never
move; weight decay is applied by the method on owned weights only.

Evaluation mode computes the effective weight without a graph and caches it (for the task used
last), keyed by the versions of the weight, the owner tensor and the masks, so the K iterations
of an attack and a whole evaluation cost what a plain layer costs. Stored weights are never
mutated to evaluate a task. Finished tasks' binary piggyback masks are kept bit-packed in host
memory (:class:`PackedBits`), so memory grows by 1 bit per weight and task, not 1 byte.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmat.nn.layers import carrying
from cmat.nn.mask_algebra import (PIGGY_INIT, PIGGY_THRESHOLD, EffectiveWeight, PackedBits, SupermaskWeight,
                                  fx_tracing, top_fraction)


class MaskedLayer(nn.Module):
    """Shared machinery of :class:`MaskedConv2d` and :class:`MaskedLinear`.

    ``base_out``/``base_in`` are the channel counts at width multiplier 1; task t's slice is
    ``(round(base_out·c_t), round(base_in/g·c_t)·g)`` with ``g = in_group`` (features per
    channel after a flatten) and ``c_t`` the task's channel multiplier; ``fixed_in`` layers
    (the first convolution) keep their input channels, ``fixed_out`` layers their outputs.
    """

    def _setup(self, has_bias: bool):
        self.base_out, self.base_in = self.weight.shape[0], self.weight.shape[1]
        self.in_group = 1
        self.fixed_in = False
        self.fixed_out = False
        self.register_buffer("owner", torch.zeros(self.weight.shape, dtype=torch.int16), persistent=False)
        self.piggy = nn.ParameterDict()          # real-valued masks of the task being trained
        self.scores = nn.ParameterDict()         # supermask scores of the task being trained (SupSup, WSN)
        self.density = 1.0                       # fraction of a slice a supermask keeps
        self.bits: dict = {}                      # t -> PackedBits (binarised piggyback masks)
        self.biases = nn.ParameterDict() if has_bias else None
        self.shapes: dict = {}                    # t -> (out_t, in_t)
        self.task = 0
        self._mask_version = 0
        # caches keyed by task id, each holding only the task used last: one entry per task
        # would grow memory with the task count (a float weight copy per task, measured
        # ~0.8 GB per task on VGG16 at width 1.5); work happens one task at a time anyway
        self._cache: dict = {}
        self._region_cache: dict = {}
        self._owned_cache: dict = {}

    # ----- structure -------------------------------------------------------------------
    def task_shape(self, multiplier: float) -> tuple:
        out = self.base_out if self.fixed_out else int(round(self.base_out * multiplier))
        if self.fixed_in:
            inp = self.base_in
        else:
            inp = int(round(self.base_in / self.in_group * multiplier)) * self.in_group
        return out, inp

    def add_task(self, t: int, multiplier: float) -> None:
        """Register task t at channel multiplier ``multiplier``; grow the weight if needed.

        New entries are owned by t with Kaiming-uniform initialisation; old entries keep their
        values and owners, so earlier tasks (which use their own slice) are unchanged. Free
        entries (owner 0) inside t's slice become t's, re-initialised.
        """
        out, inp = self.task_shape(multiplier)
        self._grow(out, inp, t)
        self.shapes[t] = (out, inp)
        with torch.no_grad():
            region = (slice(0, out), slice(0, inp))
            free = self.owner[region] == 0
            if free.any():
                fresh = torch.empty_like(self.weight[region])
                nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
                self.weight[region] = torch.where(free, fresh, self.weight[region])
                self.owner[region] = torch.where(free, torch.full_like(self.owner[region], t), self.owner[region])
        if self.biases is not None:
            bias = torch.zeros(out, device=self.weight.device)
            if str(t) in self.biases:
                old = self.biases[str(t)].detach()
                bias[: old.numel()] = old
            self.biases[str(t)] = nn.Parameter(bias)
        self._mask_version += 1

    def invalidate(self) -> None:
        """Drop the cached eval-mode effective weights: for code that changes ``owner`` or the
        weights in place outside this layer's own methods (pruning, restoring a snapshot, the store)."""
        self._mask_version += 1

    def _grow(self, out: int, inp: int, t: int) -> None:
        o0, i0 = self.weight.shape[:2]
        if out <= o0 and inp <= i0:
            return
        o1, i1 = max(out, o0), max(inp, i0)
        shape = (o1, i1) + tuple(self.weight.shape[2:])
        new_w = torch.empty(shape, device=self.weight.device, dtype=self.weight.dtype)
        nn.init.kaiming_uniform_(new_w, a=math.sqrt(5))
        new_o = torch.full(shape, t, dtype=self.owner.dtype, device=self.owner.device)
        with torch.no_grad():
            new_w[:o0, :i0] = self.weight
            new_o[:o0, :i0] = self.owner
        self.weight = nn.Parameter(new_w)
        self.owner = new_o
        for k, b in list(self.bits.items()):
            nb = torch.zeros(shape, dtype=torch.bool)
            nb[:o0, :i0] = b.unpack()
            self.bits[k] = PackedBits(nb)
        for k, p in list(self.piggy.items()):
            npg = torch.full(shape, PIGGY_INIT, device=p.device)
            with torch.no_grad():
                npg[:o0, :i0] = p
            self.piggy[k] = nn.Parameter(npg)

    def start_piggyback(self, t: int) -> None:
        """Give task t a trainable real-valued mask over earlier tasks' weights (init 1e-2)."""
        self.piggy[str(t)] = nn.Parameter(torch.full(self.weight.shape, PIGGY_INIT, device=self.weight.device))
        self._mask_version += 1

    def finish_piggyback(self, t: int) -> None:
        """Binarise task t's real mask into ``bits[t]`` and drop the real-valued copy."""
        m = self.piggy.pop(str(t))
        self.set_bits(t, m.detach() > PIGGY_THRESHOLD)

    def start_scores(self, t: int, density: float, generator=None) -> None:
        """Give task t supermask scores over its whole slice (Kaiming-uniform, as edge-popup), so
        it uses the ``density`` fraction of the slice with the largest ``|score|``."""
        s = torch.empty(self.weight.shape, device=self.weight.device)
        bound = 1.0 / math.sqrt(max(1, self.weight[0].numel()))
        s.uniform_(-bound, bound, generator=generator)
        self.scores[str(t)] = nn.Parameter(s)
        self.density = float(density)
        self._mask_version += 1

    def score_mask(self, t: int) -> torch.Tensor:
        """Task t's current supermask over its slice (bool)."""
        out, inp = self.shapes[t]
        return top_fraction(self.scores[str(t)][:out, :inp], self.density)

    @torch.no_grad()
    def finish_scores(self, t: int) -> None:
        """Fix task t's supermask M in the owner/piggyback form every masked layer stores: t
        keeps its own weights in M, releases the others (owner → 0, value kept; a later task
        re-draws them), and its piggyback bits are ``old ∧ M``. Then ``W_t = W ⊙ M`` exactly and
        the scores are dropped."""
        mask = self.score_mask(t)
        out, inp = self.shapes[t]
        own, old = self.region_masks(t)
        region = self.owner[:out, :inp]
        region[own & ~mask] = 0
        full = torch.zeros(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        full[:out, :inp] = old & mask
        del self.scores[str(t)]
        self.set_bits(t, full)

    def set_bits(self, t: int, mask: torch.Tensor) -> None:
        """Task t's binary piggyback mask (bool, the weight's shape), stored bit-packed."""
        self.bits[t] = PackedBits(mask)
        self._mask_version += 1

    def mask_bits(self, t: int) -> torch.Tensor:
        """Task t's binary piggyback mask, unpacked on the weight's device."""
        return self.bits[t].unpack(self.weight.device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # packed masks stay in host memory; unpacked on the weight's device
        self._cache = {}
        self._region_cache = {}
        self._owned_cache = {}
        return self

    # ----- effective weights --------------------------------------------------------------
    def region_masks(self, t: int) -> tuple:
        """Bool masks ``(own, old)`` over task t's slice: ``O == t`` and ``0 < O < t``. Cached
        until the owner tensor changes (growth replaces it, pruning and loading bump its version)."""
        key = (id(self.owner), self.owner._version, self.shapes[t])
        hit = self._region_cache.get(t)
        if hit is not None and hit[0] == key:
            return hit[1]
        out, inp = self.shapes[t]
        o = self.owner[:out, :inp]
        masks = (o == t, (o > 0) & (o < t))
        self._region_cache = {t: (key, masks)}
        return masks

    def picked(self, t: int) -> torch.Tensor:
        """Bool mask (task t's slice) of the earlier tasks' weights task t uses: ``old ∧ P_t``
        (``P_t ≡ 1`` without a piggyback mask)."""
        out, inp = self.shapes[t]
        _, old = self.region_masks(t)
        key = str(t)
        if key in self.piggy:
            return old & (self.piggy[key].detach()[:out, :inp] > PIGGY_THRESHOLD)
        if t in self.bits:
            return old & self.mask_bits(t)[:out, :inp]
        return old

    def effective_weight(self, t: int) -> torch.Tensor:
        out, inp = self.shapes[t]
        own, old = self.region_masks(t)
        if str(t) in self.scores:  # a supermask in training: W ⊙ top_fraction(S), straight-through
            mask = self.score_mask(t)
            if self.training:
                return SupermaskWeight.apply(self.weight[:out, :inp], self.scores[str(t)][:out, :inp], own, mask)
            with torch.no_grad():
                return self.weight[:out, :inp] * mask
        if self.training or fx_tracing():
            piggy = self.piggy[str(t)][:out, :inp] if str(t) in self.piggy else None
            return EffectiveWeight.apply(self.weight[:out, :inp], piggy, own, old, own | self.picked(t))
        key = (self.weight._version, id(self.weight), self.owner._version, self._mask_version,
               self.piggy[str(t)]._version if str(t) in self.piggy else -1)
        hit = self._cache.get(t)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            eff = (self.weight[:out, :inp] * (own | self.picked(t))).contiguous()
        self._cache = {t: (key, eff)}
        return eff

    def bias_for(self, t: int):
        return None if self.biases is None else self.biases[str(t)]

    def owned_float(self, t: int) -> torch.Tensor:
        """``1.0`` where ``O == t`` over the full weight (cached until the owner tensor changes)."""
        key = (id(self.owner), self.owner._version)
        hit = self._owned_cache.get(t)
        if hit is None or hit[0] != key:
            hit = (key, (self.owner == t).to(self.weight.dtype))
            self._owned_cache = {t: hit}
        return hit[1]


def holding(layer: nn.Module, weight: torch.Tensor, bias) -> nn.Module:
    """``layer`` (built on the meta device) with ``weight``/``bias`` as frozen parameters."""
    layer._parameters["weight"] = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer._parameters["bias"] = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


class MaskedConv2d(MaskedLayer):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        super().__init__()
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.stride, self.padding = stride, padding
        self._setup(bias)

    def forward(self, x):
        t = self.task
        return F.conv2d(x, self.effective_weight(t), self.bias_for(t), self.stride, self.padding)

    def bound_layers(self) -> list:
        """The current task's layer as plain torch (``nn.Conv2d``) for :mod:`cmat.bounds`."""
        w, bias = self.effective_weight(self.task), self.bias_for(self.task)
        return [carrying(nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), self.stride, self.padding,
                                   bias=bias is not None, device="meta"), w, bias)]

    def plain_layer(self, t: int) -> nn.Conv2d:
        """The ``nn.Conv2d`` task t's eval-mode forward computes (weights: module doc)."""
        w = self.effective_weight(t)
        bias = self.bias_for(t)
        conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), self.stride, self.padding,
                         bias=bias is not None, device="meta")
        return holding(conv, w, bias)

    def extra_repr(self):
        return f"{self.base_in}, {self.base_out}, kernel={tuple(self.weight.shape[2:])}, stride={self.stride}"


class MaskedLinear(MaskedLayer):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._setup(bias)

    def forward(self, x):
        t = self.task
        return F.linear(x, self.effective_weight(t), self.bias_for(t))

    def bound_layers(self) -> list:
        """The current task's layer as plain torch (``nn.Linear``) for :mod:`cmat.bounds`."""
        w, bias = self.effective_weight(self.task), self.bias_for(self.task)
        return [carrying(nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta"), w, bias)]

    def plain_layer(self, t: int) -> nn.Linear:
        """The ``nn.Linear`` task t's eval-mode forward computes (weights: module doc)."""
        w = self.effective_weight(t)
        bias = self.bias_for(t)
        return holding(nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta"), w, bias)

    def extra_repr(self):
        return f"{self.base_in}, {self.base_out}"


class PlainTaskNet(nn.Module):
    """``head(features(norm(x)))`` -- one task of a masked network, exported to plain layers."""

    def __init__(self, norm: nn.Module, features: nn.Module, head: nn.Module):
        super().__init__()
        self.norm, self.features, self.head = norm, features, head

    def forward(self, x):
        return self.head(self.features(self.norm(x)))


class TaskBatchNorm2d(nn.Module):
    """One BatchNorm2d per task, each at that task's width (affine and running statistics)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.base = num_features
        self.bns = nn.ModuleDict()
        self.task = 0

    def bound_layers(self) -> list:
        """The current task's ``nn.BatchNorm2d`` for :mod:`cmat.bounds`."""
        return [self.bns[str(self.task)]]

    def add_task(self, t: int, multiplier: float) -> None:
        """A BN for task t at its width; called again for the latest task it widens that task's
        BN, keeping the learned affine parameters and statistics of the existing channels."""
        dev = next(iter(self.bns.values())).weight.device if len(self.bns) else None
        bn = nn.BatchNorm2d(int(round(self.base * multiplier)), device=dev)
        old = self.bns[str(t)] if str(t) in self.bns else None
        if old is not None:
            n = old.num_features
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, name)[:n] = getattr(old, name)
                bn.num_batches_tracked.copy_(old.num_batches_tracked)
        self.bns[str(t)] = bn

    def forward(self, x):
        return self.bns[str(self.task)](x)
