"""Masked multi-task layers: one shared weight tensor, an integer owner tensor, per-task masks.

For task t a masked layer uses the slice ``[:out_t, :in_t]`` of its weight (its width when it
was learned) and the effective weight::

    W_t = W ⊙ [(O == t) ∨ (0 < O < t ∧ P_t)]

where ``O`` is the owner tensor (0 = free, k = owned by task k) and ``P_t`` the binary
piggyback mask of task t. While task t trains, ``P_t = 1[m_t > 5e-3]`` of a real-valued mask
``m_t`` (initialised 1e-2) with a straight-through gradient. A task without a piggyback mask
(PackNet) uses every weight of earlier tasks (``P_t ≡ 1``).

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

import numpy as np
import torch
import torch.fx  # noqa: F401  (is_fx_tracing)
import torch.nn.functional as F
from torch import nn

PIGGY_THRESHOLD = 5e-3
PIGGY_INIT = 1e-2


class PackedBits:
    """A bool tensor kept bit-packed (``np.packbits``, 1 bit per entry) in host memory. A task's
    binarised piggyback mask spans the whole weight: unpacked, 20 tasks of the width-1.5 VGG16
    held ~1 GB (measured growth 48 MB per task); packed, 120 MB."""

    __slots__ = ("packed", "shape")

    def __init__(self, mask: torch.Tensor):
        self.shape = tuple(mask.shape)
        self.packed = np.packbits(mask.detach().to("cpu", torch.bool).numpy().reshape(-1))

    def unpack(self, device=None) -> torch.Tensor:
        n = int(np.prod(self.shape))
        bits = torch.from_numpy(np.unpackbits(self.packed, count=n).view(np.bool_)).reshape(self.shape)
        return bits if device is None else bits.to(device)


def _tracing() -> bool:
    """True while torch.fx traces the module (no caching of symbolic values then)."""
    mod = torch.fx._symbolic_trace
    check = getattr(mod, "is_fx_symbolic_tracing", None) or getattr(mod, "is_fx_tracing", None)
    return bool(check and check())


class EffectiveWeight(torch.autograd.Function):
    """``W_t = W ⊙ used`` with ``used = own ∨ (old ∧ P_t)`` (bool, computed by the caller), in one
    multiply; backward: ``∂/∂W = g ⊙ own`` (only task t's weights learn) and, when a real mask
    ``m`` is given, the straight-through ``∂/∂m = g ⊙ W ⊙ old``. Identical to
    ``where(own, W, W.detach() · STE(m) · old)`` in value and gradients, with fewer passes over
    the weights (which dominate the cost of a masked step for fully connected layers)."""

    @staticmethod
    def forward(ctx, w, m, own, old, used):
        ctx.save_for_backward(w, own, old)
        ctx.has_mask = m is not None
        return w * used

    @staticmethod
    def backward(ctx, grad):
        w, own, old = ctx.saved_tensors
        grad_w = grad * own if ctx.needs_input_grad[0] else None
        grad_m = None
        if ctx.has_mask and ctx.needs_input_grad[1]:
            grad_m = grad * w * old
        return grad_w, grad_m, None, None, None


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
        if self.training or _tracing():
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


def _holding(layer: nn.Module, weight: torch.Tensor, bias) -> nn.Module:
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

    def plain_layer(self, t: int) -> nn.Conv2d:
        """The ``nn.Conv2d`` task t's eval-mode forward computes (weights: module doc)."""
        w = self.effective_weight(t)
        bias = self.bias_for(t)
        conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), self.stride, self.padding,
                         bias=bias is not None, device="meta")
        return _holding(conv, w, bias)

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

    def plain_layer(self, t: int) -> nn.Linear:
        """The ``nn.Linear`` task t's eval-mode forward computes (weights: module doc)."""
        w = self.effective_weight(t)
        bias = self.bias_for(t)
        return _holding(nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta"), w, bias)

    def extra_repr(self):
        return f"{self.base_in}, {self.base_out}"


class _PlainTaskNet(nn.Module):
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


class MaskedMultiHeadNet(nn.Module):
    """A masked backbone shared by all tasks, with per-task normalisation, BN, biases, heads
    and width. ``net(x, t)`` evaluates task t exactly as it was learned.

    Tasks are 0-based here (``t``); the layers see owner id ``t + 1`` (0 means free).
    ``add_task(t, num_classes, mean, std, multiplier)`` registers task t at channel multiplier
    ``multiplier`` (≥ every earlier task's: growth only widens); free weights in t's slice
    become t's. ``spec`` plus the state dict plus the mask tensors rebuild the network.
    """

    def __init__(self, arch: str, in_channels: int, input_size: int, width: float = 1.0):
        super().__init__()
        from cmat.nn.backbones import ARCHS

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
        return self.masked_layers()[-1].shapes[t + 1][0]

    def add_task(self, t: int, num_classes: int, mean, std, multiplier: float = 1.0) -> None:
        from cmat.nn.backbones import Normalize

        for m in self.task_modules():
            m.add_task(t + 1, multiplier)
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
            m.task = t + 1

    def forward(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        self.set_task(task)
        return self.heads[str(task)](self.features(self.norms[str(task)](x)))

    def task_view(self, task: int):
        from cmat.nn.backbones import TaskView

        return TaskView(self, task)

    @torch.no_grad()
    def plain_task_view(self, task: int) -> nn.Module:
        """Task ``task``'s eval-mode classifier built from plain layers: every masked layer
        becomes an ``nn.Conv2d``/``nn.Linear`` holding its effective weight (the cached tensor,
        not a copy; ``requires_grad=False``) and every task BN the task's ``nn.BatchNorm2d``. It
        computes exactly what ``net(x, task)`` computes in eval mode and is a snapshot: build it
        inside one attack call, after the weights last changed. Attacks fold BN into it."""
        from cmat.nn.fuse import _with_replaced, foldable_pairs

        tid = task + 1
        replace = {}
        for name, m in self.features.named_modules():
            if isinstance(m, MaskedLayer):
                replace[name] = m.plain_layer(tid)
            elif isinstance(m, TaskBatchNorm2d):
                replace[name] = m.bns[str(tid)]
        net = _PlainTaskNet(self.norms[str(task)], _with_replaced(self.features, replace, ""),
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
                params.append(m.biases[str(t + 1)])
        for m in self.features.modules():
            if isinstance(m, TaskBatchNorm2d):
                params += list(m.bns[str(t + 1)].parameters())
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
                m.weight.grad.addcmul_(m.weight.detach(), m.owned_float(t + 1), value=weight_decay)

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
        m._mask_version += 1

    def prune_to(self, t: int, sparsity: float, initial: list) -> None:
        """Release task t's smallest weights until, in every layer, ``sparsity`` of the
        ``initial[i]`` weights it owned before compaction are released (cumulative)."""
        for m, n0 in zip(self.masked_layers(), initial):
            owned = int((m.owner == t + 1).sum())
            self._release_smallest(m, t + 1, int(round(sparsity * n0)) - (n0 - owned))

    def prune_owned(self, t: int, fraction: float) -> dict:
        """Release the smallest-magnitude ``fraction`` of task t's weights in every layer (so
        later tasks find them free). Returns per-layer ``(released, owned before)``."""
        counts = {}
        for i, m in enumerate(self.masked_layers()):
            n = int((m.owner == t + 1).sum())
            k = int(round(fraction * n))
            self._release_smallest(m, t + 1, k)
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
