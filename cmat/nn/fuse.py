"""Fold eval-mode BatchNorm into the preceding convolution (an attack-time speed-up).

A convolution (weight W, bias b, 0 if absent) followed by an eval-mode BatchNorm (γ, β, running
mean μ, running variance σ², ε) is one convolution:

    BN(conv(x)) = conv'(x),   s = γ / √(σ² + ε),   W' = W · s (per output channel),
                              b' = (b − μ) · s + β.

:func:`fold_batchnorm` returns a *copy* of a module in which every such pair is replaced by
``conv'`` followed by ``nn.Identity``. The copy is shallow: only the containers on the path to a
replaced layer are new objects; every other submodule, parameter and buffer is shared with the
original, which is never mutated. Folded weights are snapshots (``requires_grad=False``): the copy
is meant for computing input gradients inside one attack call, then thrown away; rebuild it after
the weights or BN statistics change.

Which pairs fold is decided by tracing the module with ``torch.fx`` (cached per module object,
as long as its module tree, training flags and hooks are unchanged -- the graph of a module is
assumed to be a function of those): a pair folds when the
conv (exactly ``nn.Conv1d/2d/3d``) is called once, its only consumer is the BN (exactly
``nn.BatchNorm1d/2d/3d`` with running statistics), the BN was in eval mode *when called during the
trace* (a wrapper that switches BN to batch statistics inside its forward keeps them), neither
has hooks, and neither is reachable under two names. Anything else — masked or custom layers, a
module fx cannot trace — is left as it is, so the result always computes what the original does,
up to float rounding (~1e-6 relative).
"""
from __future__ import annotations

import collections
import copy
import weakref

import torch
import torch.fx as fx
from torch import nn

CONV_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """One convolution computing ``bn(conv(x))`` for an eval-mode ``bn`` (formula: module doc)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    bias = bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    folded = copy.copy(conv)
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    folded._parameters = {"weight": nn.Parameter(conv.weight * scale.view(shape), requires_grad=False),
                          "bias": nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)}
    return folded


class _Tracer(fx.Tracer):
    """fx tracer recording, per BN module, whether every call during the trace was in eval mode."""

    def __init__(self):
        super().__init__()
        self.eval_at_call = {}

    def call_module(self, m, forward, args, kwargs):
        if type(m) in CONV_BN.values():
            name = self.path_of_module(m)
            self.eval_at_call[name] = self.eval_at_call.get(name, True) and not m.training
        return super().call_module(m, forward, args, kwargs)


def foldable_pairs(model: nn.Module) -> list:
    """``[(conv_name, bn_name)]`` that :func:`fold_batchnorm` folds (conditions: module doc)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # untraceable forward: fold nothing, the original is always correct
        return []
    modules = dict(model.named_modules())
    reach = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        src = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv, bn = modules[src.target], modules[node.target]
        if (CONV_BN.get(type(conv)) is type(bn) and bn.running_var is not None
                and tracer.eval_at_call.get(node.target, False)
                and calls[src.target] == calls[node.target] == 1
                and reach[id(conv)] == reach[id(bn)] == 1
                and not any(m._forward_hooks or m._forward_pre_hooks for m in (conv, bn))):
            pairs.append((src.target, node.target))
    return pairs


_PAIRS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    """What the traced pairs depend on: the module tree (identities), training flags, hooks."""
    return tuple((name, id(m), m.training, bool(m._forward_hooks or m._forward_pre_hooks))
                 for name, m in model.named_modules(remove_duplicate=False))


def cached_foldable_pairs(model: nn.Module) -> list:
    """:func:`foldable_pairs`, traced once per module and signature (module tree, training flags,
    hooks) -- an attack calls this every time, and a trace costs ~20-30 ms. A module may instead
    carry its pairs as ``model.foldable_pairs`` (exports built to one fixed layout do)."""
    given = getattr(model, "foldable_pairs", None)
    if isinstance(given, list):
        return given
    sig = _signature(model)
    hit = _PAIRS_CACHE.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    pairs = foldable_pairs(model)
    _PAIRS_CACHE[model] = (sig, pairs)
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` with its foldable conv→BN pairs folded; ``model`` itself when
    there is nothing to fold. ``model`` is not mutated (contract and conditions: module doc)."""
    kinds = {type(m) for m in model.modules()}
    if not (kinds & set(CONV_BN.values()) and kinds & set(CONV_BN)):  # no pair possible: skip the trace
        return model
    pairs = cached_foldable_pairs(model)
    if not pairs:
        return model
    modules = dict(model.named_modules())
    replace = {}
    for conv_name, bn_name in pairs:
        replace[conv_name] = fold_conv_bn(modules[conv_name], modules[bn_name])
        replace[bn_name] = nn.Identity()
    return with_replaced(model, replace, "")


def with_replaced(module: nn.Module, replace: dict, prefix: str) -> nn.Module:
    """``module`` with the submodules named in ``replace`` swapped, copying only their ancestors."""
    if prefix in replace:
        return replace[prefix]
    children = {name: with_replaced(child, replace, f"{prefix}.{name}" if prefix else name)
                for name, child in module._modules.items() if child is not None}
    if all(children[name] is module._modules[name] for name in children):
        return module
    clone = copy.copy(module)
    clone._modules = type(module._modules)(module._modules)
    clone._modules.update(children)
    return clone
