"""Certified and attack bounds on each sample's critical ε (L∞, images in [0, 1]).

A task's classifier is flattened into a list of operations — affine ones (Normalize,
Conv2d, Linear, BatchNorm in eval mode, average pooling, Flatten, ANP-VS's test-time channel
mask) and ReLU and MaxPool — and bounded over the box B(x, ε) = [max(x − ε, 0), min(x + ε, 1)]:

- **IBP**: interval arithmetic, layer by layer (centre/radius form for affine layers).
- **CROWN** (Zhang et al. 2018): backward linear bound propagation. For the margin
  specification C·f(x) (rows e_y − e_k, k ≠ y) the bound is propagated back through affine
  layers exactly (vector–Jacobian products) and through each ReLU with the linear relaxation
  lower = a·z (a ∈ {0, 1}, the adaptive choice), upper = u/(u − l)·(z − l) on unstable neurons,
  using pre-activation bounds computed the same way for every earlier ReLU. A MaxPool is not
  propagated through: the back-substitution stops there and concretises over the interval of
  the MaxPool's output (interval fallback). Every CROWN bound is intersected with IBP's, so
  CROWN is never looser than IBP.

Normalisation is handled exactly as its own affine operation at the front (folding it into a
*padded* first convolution would change the function at the image borders).

The critical ε of a correctly classified sample is bracketed by: the largest certified ε
(bisection; certified when the lower bound of every margin is > 0) and the smallest ε at
which a PGD attack finds a counterexample (bisection, batched over samples). Results follow
VERONA's CSV columns.
"""
from __future__ import annotations

import csv
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmat.errors import CmatError

# ----------------------------------------------------------------------------- operations


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


# ----------------------------------------------------------------------------- from modules


def _bn_affine(bn: nn.BatchNorm2d, live: Optional[dict] = None) -> ChannelAffine:
    """Eval-mode BN as a per-channel affine map; with ``live`` (training bounds), the batch
    statistics recorded for ``bn`` in ``live`` when there are any, and no detaching."""
    mean, var = live[bn] if live is not None and bn in live else (bn.running_mean, bn.running_var)
    inv = 1 / torch.sqrt(var + bn.eps)
    scale = bn.weight * inv if bn.affine else inv
    shift = (bn.bias if bn.affine else 0) - mean * scale
    if live is None:
        return ChannelAffine(scale.detach(), shift.detach())
    return ChannelAffine(scale, shift)


def _flatten_module(m: nn.Module, ops: list, live: Optional[dict] = None) -> None:
    """Append ``m``'s operations to ``ops``. ``live=None``: verification (weights detached, BN
    with running statistics); a dict: training bounds (differentiable weights, BN layers found
    in the dict with the batch statistics recorded there)."""
    from cmat.nn.beta_bernoulli import PRUNE_AT, BetaBernoulliMask
    from cmat.nn.backbones import Normalize
    from cmat.nn.masked import MaskedConv2d, MaskedLinear, TaskBatchNorm2d

    def d(t):
        return None if t is None else (t if live is not None else t.detach())

    if isinstance(m, nn.Sequential):
        for c in m:
            _flatten_module(c, ops, live)
    elif isinstance(m, Normalize):
        ops.append(ChannelAffine((1 / m.std).flatten(), (-m.mean / m.std).flatten()))
    elif isinstance(m, MaskedConv2d):
        t = m.task
        s, p = m.stride, m.padding
        ops.append(Conv(d(m.effective_weight(t)), d(m.bias_for(t)),
                        (s, s) if isinstance(s, int) else s, (p, p) if isinstance(p, int) else p))
    elif isinstance(m, MaskedLinear):
        ops.append(Dense(d(m.effective_weight(m.task)), d(m.bias_for(m.task))))
    elif isinstance(m, TaskBatchNorm2d):
        ops.append(_bn_affine(m.bns[str(m.task)], live))
    elif isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.dilation != (1, 1) or isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise CmatError(f"verify: unsupported convolution {m}")
        ops.append(Conv(d(m.weight), d(m.bias), m.stride, m.padding))
    elif isinstance(m, nn.Linear):
        ops.append(Dense(d(m.weight), d(m.bias)))
    elif isinstance(m, nn.BatchNorm2d):
        ops.append(_bn_affine(m, live))
    elif isinstance(m, BetaBernoulliMask):
        e = m.expected().detach()
        ops.append(ChannelAffine(e * (e > PRUNE_AT), torch.zeros_like(e)))
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
    bounds (``live`` = recorded BN batch statistics, see :mod:`cmat.certified`) leave it as is."""
    from cmat.nn.backbones import TaskView

    if live is None:
        model.eval()
    ops: list = []
    if isinstance(model, TaskView):
        net, t = model.net, model.task
        if hasattr(net, "set_task"):
            net.set_task(t)
            _flatten_module(net.norms[str(t)], ops, live)
            _flatten_module(net.features, ops, live)
            _flatten_module(net.heads[str(t)], ops, live)
        else:
            _flatten_module(net.norms[t], ops, live)
            _flatten_module(net.features, ops, live)
            _flatten_module(net.heads[t], ops, live)
    elif hasattr(model, "verify_parts"):  # e.g. cmat.transfer.TransferModel
        for part in model.verify_parts():
            _flatten_module(part, ops, live)
    else:
        _flatten_module(model, ops, live)
    return ops


def run_ops(ops: list, x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        if isinstance(op, ReLU):
            x = F.relu(x)
        elif isinstance(op, MaxPool):
            x = op.module(x)
        else:
            x = op.forward(x)
    return x


# ----------------------------------------------------------------------------- bounds


def input_box(x: torch.Tensor, eps: torch.Tensor):
    e = eps.view((-1,) + (1,) * (x.dim() - 1))
    return (x - e).clamp(0, 1), (x + e).clamp(0, 1)


def ibp(ops: list, lo: torch.Tensor, hi: torch.Tensor, record: Optional[list] = None):
    """Interval bounds of every operation's output; ``record`` collects (lo, hi) per op input."""
    for op in ops:
        if record is not None:
            record.append((lo, hi))
        if isinstance(op, ReLU):
            lo, hi = F.relu(lo), F.relu(hi)
        elif isinstance(op, MaxPool):
            lo, hi = op.module(lo), op.module(hi)
        else:
            c, r = (hi + lo) / 2, (hi - lo) / 2
            c, r = op.forward(c), op.abs_linear(r)
            lo, hi = c - r, c + r
    return lo, hi


def _concretize(lam: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """min over the box of Λ z + const: Λ⁺ lo + Λ⁻ hi + const, per (N, K)."""
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    return (pos * lo.unsqueeze(1)).flatten(2).sum(2) + (neg * hi.unsqueeze(1)).flatten(2).sum(2) + const


def _backward_lower(ops: list, shapes: list, bounds: list, lam: torch.Tensor,
                    alphas: Optional[dict] = None) -> torch.Tensor:
    """Lower bound of Λ·(output of ``ops``) over the box ``bounds[0]`` of their input, by
    back-substitution (no MaxPool inside); ``bounds[k]`` holds the input bounds of ``ops[k]``
    (pre-activation bounds for ReLUs), ``shapes[k]`` its input shape. Λ: (N, K, *out).
    ``alphas[k]``: lower slopes of ReLU ``ops[k]``'s unstable neurons (default: CROWN's
    adaptive 0/1 choice)."""
    const = torch.zeros(lam.shape[:2], dtype=lam.dtype, device=lam.device)
    for k in range(len(ops) - 1, -1, -1):
        op = ops[k]
        if isinstance(op, ReLU):
            l, u = bounds[k][0].unsqueeze(1), bounds[k][1].unsqueeze(1)
            unstable = (l < 0) & (u > 0)
            active = (l >= 0).to(lam.dtype)
            slope_up = torch.where(unstable, u / (u - l).clamp(min=1e-12), active)
            icpt_up = torch.where(unstable, -slope_up * l, torch.zeros_like(l))
            chosen = alphas[k] if alphas is not None and k in alphas else (u > -l).to(lam.dtype)
            slope_lo = torch.where(unstable, chosen, active)
            pos, neg = lam.clamp(min=0), lam.clamp(max=0)
            const = const + (neg * icpt_up).flatten(2).sum(2)
            lam = pos * slope_lo + neg * slope_up
        else:
            const = const + op.bias_term(lam, shapes[k])
            lam = op.vjp(lam, shapes[k])
    return _concretize(lam, const, *bounds[0])


def _segment_start(ops: list, end: int) -> int:
    """Index just after the last MaxPool before ``end`` (0 if none): CROWN's back-substitution
    stops there and uses the interval of the MaxPool's output."""
    for i in range(end - 1, -1, -1):
        if isinstance(ops[i], MaxPool):
            return i + 1
    return 0


def _interval_exact(segment: list) -> bool:
    """Whether interval arithmetic is already exact on ``segment``: no ReLU and at most one op
    that mixes coordinates (per-channel affine maps and Flatten are diagonal/permutations, so
    |A₂A₁| = |A₂||A₁| there). CROWN cannot tighten such bounds, so it is skipped."""
    if any(isinstance(op, (ReLU, MaxPool)) for op in segment):
        return False
    return sum(not isinstance(op, (ChannelAffine, Flatten)) for op in segment) <= 1


def _intersect(a, b):
    return torch.max(a[0], b[0]), torch.min(a[1], b[1])


ROW_BUDGET = 2 ** 26  # floats per chunk of CROWN rows (N × rows × layer width): ~256 MB in float32


def crown_bounds(ops: list, lo: torch.Tensor, hi: torch.Tensor, max_neurons: Optional[int] = None,
                 row_budget: int = ROW_BUDGET) -> list:
    """Input bounds of every op (``bounds[i]`` for ``ops[i]``, ``bounds[-1]`` the output): IBP,
    with the pre-activation bounds of every ReLU's unstable neurons tightened by CROWN
    (back-substitution to the segment start), intersected with IBP's. Unstable neurons are
    processed in chunks of at most ``row_budget`` floats, so wide layers are tightened too (the
    cost grows with their number; memory stays bounded); ``max_neurons`` caps the cost: a
    layer with more unstable neurons (over the batch) keeps its IBP bounds — sound, looser.
    Segments on which interval arithmetic is already exact are skipped."""
    bounds: list = []
    out = ibp(ops, lo, hi, bounds)
    bounds.append(out)
    shapes = [b[0].shape[1:] for b in bounds]
    n = lo.shape[0]
    for i, op in enumerate(ops):
        if not isinstance(op, ReLU):
            continue
        s = _segment_start(ops, i)
        if s == i or _interval_exact(ops[s:i]):
            continue
        l0, u0 = bounds[i][0].flatten(1), bounds[i][1].flatten(1)
        idx = ((l0 < 0) & (u0 > 0)).any(0).nonzero().squeeze(1)  # only unstable neurons need CROWN
        if idx.numel() == 0 or (max_neurons is not None and idx.numel() > max_neurons):
            continue
        dim = l0.shape[1]
        widest = max(int(torch.tensor(sh).prod()) for sh in shapes[s:i + 1])
        chunk = max(1, row_budget // max(n * widest, 1))
        new_l, new_u = l0.clone(), u0.clone()
        for c in range(0, idx.numel(), chunk):
            part = idx[c:c + chunk]
            rows = torch.zeros(part.numel(), dim, dtype=lo.dtype, device=lo.device)
            rows[torch.arange(part.numel()), part] = 1
            rows = rows.view((1, part.numel()) + tuple(shapes[i])).expand(n, -1, *shapes[i])
            low = _backward_lower(ops[s:i], shapes[s:i], bounds[s:i], rows)
            up = -_backward_lower(ops[s:i], shapes[s:i], bounds[s:i], -rows)
            new_l[:, part] = torch.max(l0[:, part], low)
            new_u[:, part] = torch.min(u0[:, part], up)
        bounds[i] = (new_l.view_as(bounds[i][0]), new_u.view_as(bounds[i][1]))
        later: list = []
        last = ibp(ops[i:], *bounds[i], later)
        later.append(last)
        bounds[i + 1:] = [_intersect(a, b) for a, b in zip(bounds[i + 1:], later[1:])]
    return bounds


def crown(ops: list, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor, bounds: Optional[list] = None,
          alphas: Optional[dict] = None, max_neurons: Optional[int] = None) -> torch.Tensor:
    """Lower bounds of ``spec @ f(x)`` (spec: N×K×classes) over the box [lo, hi], CROWN ∩ IBP,
    from :func:`crown_bounds` (computed here unless given); ``alphas`` (ReLU op index → lower
    slopes in [0, 1] of its unstable neurons, shape N×1×…) replace CROWN's adaptive choice."""
    bounds = bounds if bounds is not None else crown_bounds(ops, lo, hi, max_neurons)
    shapes = [b[0].shape[1:] for b in bounds]
    s = _segment_start(ops, len(ops))
    shifted = None if alphas is None else {k - s: v for k, v in alphas.items() if k >= s}
    lower = _backward_lower(ops[s:], shapes[s:], bounds[s:], spec, shifted)
    zero = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
    return torch.max(lower, _concretize(spec, zero, *bounds[-1]))


def alpha_crown(ops: list, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor, steps: int = 20,
                lr: float = 0.1, max_neurons: Optional[int] = None) -> torch.Tensor:
    """α-CROWN (Xu et al. 2021) on the final specification: the lower relaxation relu(z) ≥ α·z
    of every unstable neuron of the last segment gets its own slope α ∈ [0, 1] per sample,
    optimised by Adam (``steps`` steps) to maximise the bound; intermediate bounds are CROWN's.
    Any α in [0, 1] gives a sound bound, so the result is the elementwise best over CROWN's
    choice and every iterate — never looser than :func:`crown`."""
    bounds = crown_bounds(ops, lo, hi, max_neurons)
    best = crown(ops, lo, hi, spec, bounds)
    s = _segment_start(ops, len(ops))
    params = {}
    for k in range(s, len(ops)):
        if isinstance(ops[k], ReLU):
            l, u = bounds[k][0].unsqueeze(1), bounds[k][1].unsqueeze(1)
            params[k] = (u > -l).to(lo.dtype).clone().requires_grad_(True)
    if not params or steps < 1:
        return best
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            lower = crown(ops, lo, hi, spec, bounds, params)
            opt.zero_grad()
            (-lower.sum()).backward()
            opt.step()
            with torch.no_grad():
                for a in params.values():
                    a.clamp_(0, 1)
                best = torch.max(best, lower.detach())
        with torch.no_grad():
            best = torch.max(best, crown(ops, lo, hi, spec, bounds, params))
    return best


def margin_spec(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Rows e_y − e_k for k ≠ y: (N, n_classes − 1, n_classes)."""
    eye = torch.eye(n_classes, dtype=torch.float32, device=y.device)
    spec = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = torch.ones(len(y), n_classes, dtype=torch.bool, device=y.device)
    keep[torch.arange(len(y)), y] = False
    return spec[keep].view(len(y), n_classes - 1, n_classes)


def margin_lower_bound(ops, x, y, eps, method: str = "crown", time_limit: float = 10.0,
                       stats: Optional[dict] = None, max_neurons: Optional[int] = None) -> torch.Tensor:
    """Per sample, the lower bound of min_k (f_y − f_k) over B(x, ε); > 0 means certified."""
    lo, hi = input_box(x, eps)
    n_classes = run_ops(ops, x[:1]).shape[1]
    spec = margin_spec(y, n_classes).to(x.dtype)
    if method == "ibp":
        out_lo, out_hi = ibp(ops, lo, hi)
        lower = _concretize(spec, torch.zeros(spec.shape[:2], dtype=x.dtype, device=x.device), out_lo, out_hi)
    elif method == "crown":
        lower = crown(ops, lo, hi, spec, max_neurons=max_neurons)
    elif method == "alpha-crown":
        lower = alpha_crown(ops, lo, hi, spec, max_neurons=max_neurons)
    elif method == "milp":
        from cmat.milp import milp_lower_bound

        return milp_lower_bound(ops, x, y, eps, spec, time_limit=time_limit, stats=stats)
    else:
        raise CmatError(f"unknown bound {method!r} (valid: {', '.join(BOUNDS)})")
    return lower.min(1).values


# The harness and the transfer study run CROWN after every task on every image: layers with more
# unstable neurons than this keep their IBP bounds there (measured: removing the cap made one
# digits cell's verification > 15× slower). `cmat verify` refines every layer unless told.
HARNESS_NEURONS = 512


class CertifiedCheck:
    """The harness entry ``certified``: not an attack but a proof — an image counts when the
    bound proves the whole ball classified correctly (:func:`certified_mask`, sound). It never
    enters ``worst`` (which is over attacks), and certified ≤ worst holds image by image."""

    certifies = True

    def __init__(self, eps: float, bound: str = "crown", max_neurons: Optional[int] = HARNESS_NEURONS):
        if bound not in BOUNDS:
            raise CmatError(f"unknown bound {bound!r} (valid: {', '.join(BOUNDS)})")
        self.eps, self.bound, self.max_neurons = float(eps), bound, max_neurons

    def params(self) -> dict:
        return {"attack": "certified", "eps": self.eps, "alpha": None, "steps": 0, "bound": self.bound,
                "max_neurons": self.max_neurons}

    def proven(self, model, x, y, device="cpu") -> torch.Tensor:
        return certified_mask(model, x.to(device), y.to(device), self.eps, self.bound, max_neurons=self.max_neurons)


def certified_mask(model, x, y, eps: float, bound: str = "crown", batch_size: int = 32,
                   max_neurons: Optional[int] = None) -> torch.Tensor:
    """Per image: True when ``bound`` proves every point of B(x, ε) classified as ``y`` (so the
    image is also correct clean). Sound: False means "not proven", never "attackable". CROWN's
    memory grows with batch × unstable neurons, hence the batches."""
    ops = network_ops(model)
    out = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            lower = margin_lower_bound(ops, xb, yb, torch.full((len(xb),), float(eps), dtype=xb.dtype), bound,
                                       max_neurons=max_neurons)
            out[i:i + batch_size] = (lower > 0).cpu()
    return out


# ----------------------------------------------------------------------------- critical ε


def pgd_per_sample(model, x, y, eps: torch.Tensor, steps: int = 20, restarts: int = 1, generator=None):
    """PGD with a per-sample ε (α = ε/4), for batched bisection; returns "attack succeeded"."""
    from cmat.attacks import eval_mode

    e = eps.view(-1, 1, 1, 1)
    fooled = torch.zeros(len(x), dtype=torch.bool)
    with eval_mode(model), torch.enable_grad():
        for _ in range(restarts):
            noise = torch.rand(x.shape, generator=generator) * 2 - 1
            xa = (x + noise * e).clamp(0, 1)
            for _ in range(steps):
                xa.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
                xa = torch.min(torch.max(xa.detach() + e / 4 * g.sign(), x - e), x + e).clamp(0, 1)
            with torch.no_grad():
                fooled |= model(xa).argmax(1) != y
    return fooled


def bisect(predicate, n: int, hi: float, iters: int, increasing_true: bool):
    """Per-sample bisection on [0, hi]. ``predicate(eps) -> bool (N,)``. For ``increasing_true``
    (attack success) it returns the smallest ε found true (inf if not true at ``hi``); otherwise
    (certified) the largest ε known true."""
    lo_ = torch.zeros(n)
    hi_ = torch.full((n,), hi)
    if increasing_true:
        ok = predicate(hi_)
        result = torch.where(ok, hi_, torch.full((n,), math.inf))
        for _ in range(iters):
            mid = (lo_ + hi_) / 2
            p = predicate(mid)
            hi_ = torch.where(p, mid, hi_)
            lo_ = torch.where(p, lo_, mid)
        return torch.where(ok, hi_, result)
    ok = predicate(hi_)
    for _ in range(iters):
        mid = (lo_ + hi_) / 2
        p = predicate(mid)
        lo_ = torch.where(p, mid, lo_)
        hi_ = torch.where(p, hi_, mid)
    return torch.where(ok, hi_, lo_)


def _milp_counterexamples(model, x, y, points) -> torch.Tensor:
    """Per sample the smallest ε at which an exact MILP minimiser is a real counterexample:
    inside the ball and misclassified by the model itself (a forward pass, not the solver's
    arithmetic); inf where there is none."""
    best = torch.full((len(x),), math.inf)
    with torch.no_grad():
        for n, eps, point in points:
            xa = torch.as_tensor(point, dtype=x.dtype).view_as(x[n]).clamp(0, 1)
            xa = torch.min(torch.max(xa, x[n] - eps), x[n] + eps)
            if eps < best[n] and int(model(xa[None]).argmax(1)) != int(y[n]):
                best[n] = eps
    return best


def critical_eps(model, x, y, eps_max: float, bound: str = "crown", iters: int = 12, attack_steps: int = 20,
                 seed: int = 0, time_limit: float = 10.0, max_neurons: Optional[int] = None) -> dict:
    """Certified lower end and attack upper end of each sample's critical ε (correct samples);
    for ``milp``, ``unknown`` counts the (sample, ε) checks that ran out of ``time_limit``, and
    the upper end also takes the MILP's own minimisers that the model misclassifies."""
    ops = network_ops(model)
    t0 = time.time()
    stats: dict = {}
    with torch.no_grad():
        certified = bisect(lambda e: margin_lower_bound(ops, x, y, e, bound, time_limit, stats, max_neurons) > 0,
                           len(x), eps_max, iters, False)
    t1 = time.time()
    gen = torch.Generator().manual_seed(seed)
    attack = bisect(lambda e: pgd_per_sample(model, x, y, e, attack_steps, generator=gen), len(x), eps_max, iters, True)
    attack = torch.min(attack, _milp_counterexamples(model, x, y, stats.get("points", [])))
    t2 = time.time()
    return {"certified": certified, "attack": attack, "bound_seconds": t1 - t0, "attack_seconds": t2 - t1,
            "unknown": stats.get("unknown", 0)}


BOUNDS = ("ibp", "crown", "alpha-crown", "milp")

COLUMNS = ("network", "image_id", "original_label", "epsilon_value", "smallest_sat_value", "total_time", "verifier")


def verify_run(run_dir, task: int, n: int, bound: str = "crown", eps_max: Optional[float] = None, out=None,
               data_root=None, iters: int = 12, at_eps: Optional[float] = None, time_limit: float = 10.0,
               max_neurons: Optional[int] = None) -> dict:
    """``cmat verify``: the CSV (VERONA columns), ECDF plots and a summary for one task."""
    from pathlib import Path

    import cmat
    from tasks import tasks_for_config

    run = cmat.load(run_dir)
    cfg = run.config
    if not 0 <= task < len(run.task_names):
        raise CmatError(f"task {task} out of range: the run has tasks 0..{len(run.task_names) - 1}")
    if bound not in BOUNDS:
        raise CmatError(f"unknown bound {bound!r} (valid: {', '.join(BOUNDS)})")
    seq = tasks_for_config(cfg, data_root, download=False)
    model = run.model(task)
    network_ops(model)  # refuse unsupported networks before any work
    x, y = seq[task].test.tensors(torch.arange(min(n, len(seq[task].test))))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    ids = correct.nonzero().squeeze(1)
    eps_at = float(at_eps if at_eps is not None else cfg.threat.eps)
    eps_max = float(eps_max if eps_max is not None else 4 * eps_at)
    t0 = time.time()
    res = critical_eps(model, x[ids], y[ids], eps_max, bound, iters, seed=cfg.seed, time_limit=time_limit,
                       max_neurons=max_neurons)
    per = (time.time() - t0) / max(len(ids), 1)
    out = Path(out or Path(run_dir) / "verify")
    out.mkdir(parents=True, exist_ok=True)
    name = f"{Path(run_dir).name}/task{task}"
    csv_path = out / f"task{task}_{bound}.csv"
    tmp = csv_path.with_name("." + csv_path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for k, i in enumerate(ids.tolist()):
            w.writerow([name, i, int(y[i]), f"{float(res['certified'][k]):.6g}", f"{float(res['attack'][k]):.6g}",
                        f"{per:.4f}", bound])
    tmp.replace(csv_path)
    cert = res["certified"]
    summary = {"task": task, "bound": bound, "samples": int(len(x)), "correct": int(len(ids)),
               "median_certified_eps": float(cert.median()) if len(cert) else 0.0,
               "median_attack_eps": float(res["attack"].median()) if len(cert) else 0.0,
               "eps": eps_at, "certified_accuracy": float((cert >= eps_at).sum()) / max(len(x), 1),
               "attack_upper_accuracy": float((res["attack"] > eps_at).sum()) / max(len(x), 1),
               "samples_per_second": len(ids) / max(res["bound_seconds"], 1e-9),
               **({"milp_time_limit": time_limit, "milp_unknown_checks": res["unknown"]} if bound == "milp" else {}),
               "csv": str(csv_path)}
    from cmat.plots import ecdf_figure, plt

    fig = ecdf_figure({f"certified ({bound})": cert.tolist(), "PGD counterexample": res["attack"].tolist()}, eps_at)
    fig.savefig(out / f"task{task}_{bound}_ecdf.png", dpi=110)
    plt.close(fig)
    return summary
