"""The public API of the bounds: lower bounds of a network's classification margins
min_k (f_y − f_k) over the L∞ ball B(x, ε) ∩ [0, 1]ⁿ, given the network's operations
(:func:`cmat.bounds.ops.network_ops`), by ``ibp``, ``crown``, ``alpha-crown`` or ``milp``
(:func:`margin_lower_bound`); whether they certify (:func:`proven`: the bound exceeds the
rounding tolerance of :mod:`cmat.bounds.tolerance`, the one definition of a certified image);
the training bound of certified objectives (:func:`training_margin_lower_bound`); and the
harness entry ``certified``.
"""
from __future__ import annotations

from typing import Optional

import torch

from cmat.bounds.alpha_crown import alpha_crown
from cmat.bounds.crown import backward_lower, crown, segment_start
from cmat.bounds.ibp import concretize, ibp, input_box
from cmat.bounds.milp import milp_lower_bound
from cmat.bounds.ops import network_ops, run_ops
from cmat.bounds.tolerance import certification_tolerance, certified
from cmat.errors import CmatError



def margin_spec(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Rows e_y − e_k for k ≠ y: (N, n_classes − 1, n_classes)."""
    eye = torch.eye(n_classes, dtype=torch.float32, device=y.device)
    spec = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = torch.ones(len(y), n_classes, dtype=torch.bool, device=y.device)
    keep[torch.arange(len(y)), y] = False
    return spec[keep].view(len(y), n_classes - 1, n_classes)


def _ibp(ops, x, y, eps, spec, lo, hi, **_):
    out_lo, out_hi = ibp(ops, lo, hi)
    return concretize(spec, torch.zeros(spec.shape[:2], dtype=x.dtype, device=x.device), out_lo, out_hi).min(1).values


def _crown(ops, x, y, eps, spec, lo, hi, max_neurons=None, **_):
    return crown(ops, lo, hi, spec, max_neurons=max_neurons).min(1).values


def _alpha_crown(ops, x, y, eps, spec, lo, hi, max_neurons=None, **_):
    return alpha_crown(ops, lo, hi, spec, max_neurons=max_neurons).min(1).values


def _milp(ops, x, y, eps, spec, lo, hi, time_limit=10.0, stats=None, node_limit=None, **_):
    return milp_lower_bound(ops, x, y, eps, spec, time_limit=time_limit, stats=stats, node_limit=node_limit)


#: name → fn(ops, x, y, eps, spec, lo, hi, **options) → per-sample lower bound of min_k (f_y − f_k);
#: options: max_neurons, time_limit, stats, node_limit (each bound takes the ones it uses). A new
#: bound is a module of its own plus one line here; `cmat verify --bound`, the harness's
#: ``certified`` and the CLI's choices read this registry.
BOUNDS = {"ibp": _ibp, "crown": _crown, "alpha-crown": _alpha_crown, "milp": _milp}


def margin_lower_bound(ops, x, y, eps, method: str = "crown", time_limit: Optional[float] = 10.0,
                       stats: Optional[dict] = None, max_neurons: Optional[int] = None,
                       node_limit: Optional[int] = None) -> torch.Tensor:
    """Per sample, the lower bound of min_k (f_y − f_k) over B(x, ε) by the bound ``method``
    (:data:`BOUNDS`); it certifies only above the rounding tolerance (:func:`proven`)."""
    if method not in BOUNDS:
        raise CmatError(f"unknown bound {method!r} (valid: {', '.join(BOUNDS)})")
    lo, hi = input_box(x, eps)
    n_classes = run_ops(ops, x[:1]).shape[1]
    spec = margin_spec(y, n_classes).to(x.dtype)
    return BOUNDS[method](ops, x, y, eps, spec, lo, hi, max_neurons=max_neurons, time_limit=time_limit,
                          stats=stats, node_limit=node_limit)


def proven(ops, x, y, eps, method: str = "crown", time_limit: Optional[float] = 10.0,
           stats: Optional[dict] = None, max_neurons: Optional[int] = None,
           node_limit: Optional[int] = None) -> torch.Tensor:
    """Per sample, the certified bit: :func:`margin_lower_bound` > the rounding tolerance
    (:func:`cmat.bounds.tolerance.certification_tolerance`), never merely > 0."""
    lower = margin_lower_bound(ops, x, y, eps, method, time_limit, stats, max_neurons, node_limit)
    return certified(lower, certification_tolerance(ops, x, eps))


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
    image is also correct clean). Sound: False means "not proven", never "attackable". IBP runs
    first on every image (one forward pass); the costlier bounds run only on the images it leaves
    unproven — CROWN and α-CROWN are intersected with IBP and MILP is exact, so an image IBP
    proves they prove too (on an IBP-trained cnn-ibp, CROWN on all 2,115 images of a task took
    ~15 min on one core). CROWN's memory grows with batch × unstable neurons, hence the batches."""
    ops = network_ops(model)
    eps_of = lambda xb: torch.full((len(xb),), float(eps), dtype=xb.dtype)  # noqa: E731
    out = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        for i in range(0, len(x), 256):
            out[i:i + 256] = proven(ops, x[i:i + 256], y[i:i + 256], eps_of(x[i:i + 256]), "ibp").cpu()
        if bound == "ibp":
            return out
        rest = (~out).nonzero().squeeze(1)
        for i in range(0, len(rest), batch_size):
            idx = rest[i:i + batch_size]
            xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
            out[idx] = proven(ops, xb, yb, eps_of(xb), bound, max_neurons=max_neurons).cpu()
    return out


def training_margin_lower_bound(ops: list, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float) -> torch.Tensor:
    """(N, C−1) lower bounds of the margins z_y − z_k (k ≠ y) over B(x, ε), differentiable
    through ``ops`` (built with ``network_ops(model, live=...)``): β·CROWN-IBP + (1 − β)·IBP,
    where CROWN-IBP is CROWN's backward pass from the margin specification with IBP's
    intermediate bounds (β = 0: pure IBP, no backward pass). Used by certified training."""
    lo, hi = input_box(x, torch.full((len(x),), float(eps), dtype=x.dtype, device=x.device))
    bounds: list = []
    out = ibp(ops, lo, hi, bounds)
    bounds.append(out)
    spec = margin_spec(y, out[0].shape[1]).to(x.dtype)
    zero = torch.zeros(spec.shape[:2], dtype=x.dtype, device=x.device)
    lower = concretize(spec, zero, *out)
    if beta > 0:
        shapes = [b[0].shape[1:] for b in bounds]
        s = segment_start(ops, len(ops))
        lower = beta * backward_lower(ops[s:], shapes[s:], bounds[s:], spec) + (1 - beta) * lower
    return lower
