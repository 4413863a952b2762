"""What counts as "verified" from one interval bound of the logits — the sound criteria next to
the one SHIELD publishes (Krukowski et al. 2025, ``src/experiment/calc_ver_accuracy.py``).

IBP gives, per image, a box of the logits over B(x, ε): lo ≤ f(x') ≤ hi for every x' in the ball
((N, C) each). Three ways to turn it into a per-image "verified" bit:

- ``shield``: argmax(lo) = argmax(hi) = y, SHIELD's count ("logits − r" and "logits + r" both
  predict y). It compares the true class's lower end with the other classes' *lower* ends, and
  upper with upper; it does not imply that any point of the ball is classified y except the
  corners' own logits. **Not a certificate**: lo = (1, 0.5), hi = (3, 2), y = 0 passes it while a
  point of the box with logits (1, 2) would be classified 1.
- ``interval``: lo[y] > max_{k≠y} hi[k], the sound test on the logit box.
- ``margin-ibp`` / ``margin-crown``: cmat's ``certified`` (:func:`cmat.bounds.margins.proven`):
  the lower bound of the margins min_k (f_y − f_k) over the ball above the rounding tolerance.
  With IBP that bound is lo[y] − max hi[k], the ``interval`` test made safe against rounding;
  ``margin-crown`` is the harness's certificate (:func:`cmat.bounds.margins.certified_mask`):
  IBP's proofs kept, CROWN on the margins of the rest (layers with more than
  ``HARNESS_NEURONS`` unstable neurons keep IBP bounds), so it proves at least what IBP does.

:func:`criteria_counts` computes all four on the same images, so a table shows how much
``shield`` overcounts.
"""
from __future__ import annotations

import torch

from cmat.bounds.ibp import ibp, input_box
from cmat.bounds.margins import HARNESS_NEURONS, certified_mask
from cmat.bounds.ops import network_ops
from cmat.bounds.tolerance import certification_tolerance, certified

CRITERIA = ("shield", "interval", "margin-ibp", "margin-crown")


def shield_verified(lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SHIELD's count (unsound): argmax of the lower logits = argmax of the upper logits = y."""
    return (lo.argmax(1) == y) & (hi.argmax(1) == y)


def interval_margin(lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """lo[y] − max over k ≠ y of hi[k]: IBP's lower bound of the margins from a logit box. (N,)"""
    others = hi.clone()
    others[torch.arange(len(y)), y] = float("-inf")
    return lo[torch.arange(len(y)), y] - others.max(1).values


def interval_verified(lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sound test on a logit box: lo[y] > max over k ≠ y of hi[k]. (N,) bool."""
    return interval_margin(lo, hi, y) > 0


def criteria_bits(model, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int = 256) -> dict:
    """Per image and criterion (:data:`CRITERIA`), the "verified" bit over B(x, ε) ∩ [0, 1]ⁿ, and
    ``correct`` (clean). The sound ones imply ``correct``; ``shield`` does not even imply that."""
    ops = network_ops(model)
    out: dict = {name: [] for name in ("correct",) + CRITERIA[:-1]}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            eb = torch.full((len(xb),), float(eps), dtype=xb.dtype)
            lo, hi = ibp(ops, *input_box(xb, eb))
            out["correct"].append(model(xb).argmax(1) == yb)
            out["shield"].append(shield_verified(lo, hi, yb))
            out["interval"].append(interval_verified(lo, hi, yb))
            # the same box, with the rounding tolerance: cmat's certified bit by IBP, no second pass
            out["margin-ibp"].append(certified(interval_margin(lo, hi, yb), certification_tolerance(ops, xb, eb)))
    out = {k: torch.cat(v).cpu() for k, v in out.items()}
    # the harness's certificate: IBP's proofs kept, CROWN (wide layers capped) on the rest only
    out["margin-crown"] = certified_mask(model, x, y, eps, "crown", max_neurons=HARNESS_NEURONS).cpu()
    return out


def criteria_counts(model, x: torch.Tensor, y: torch.Tensor, eps: float, robust=None) -> dict:
    """``{"n", "correct", <criterion>: count, "shield_not_sound": images SHIELD counts that the
    margin (CROWN) does not prove}``; with ``robust`` ((N,) bool: the image survived every attack
    at this ε) also ``shield_broken`` (SHIELD counts it, an attack breaks it) and
    ``sound_broken`` (a sound criterion proves it, an attack breaks it: must be 0)."""
    bits = criteria_bits(model, x, y, eps)
    counts = {"n": int(len(y)), **{k: int(v.sum()) for k, v in bits.items()}}
    counts["shield_not_sound"] = int((bits["shield"] & ~bits["margin-crown"]).sum())
    if robust is not None:
        robust = torch.as_tensor(robust, dtype=torch.bool)
        counts["shield_broken"] = int((bits["shield"] & ~robust).sum())
        counts["sound_broken"] = int((bits["margin-crown"] & ~robust).sum())
    return counts
