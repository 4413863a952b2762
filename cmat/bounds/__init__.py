"""Sound bounds on a classifier over an L∞ ball, images in [0, 1].

A task's classifier is flattened into a list of operations (:mod:`cmat.bounds.ops`) and bounded
over the box B(x, ε) = [max(x − ε, 0), min(x + ε, 1)] by

- **IBP** (:mod:`cmat.bounds.ibp`): interval arithmetic, layer by layer;
- **CROWN** (:mod:`cmat.bounds.crown`): backward linear bound propagation, intersected with IBP;
- **α-CROWN** (:mod:`cmat.bounds.alpha_crown`): CROWN with optimised lower ReLU slopes;
- **MILP** (:mod:`cmat.bounds.milp`): exact, for small networks without MaxPool.

The public API (:mod:`cmat.bounds.margins`): ``network_ops(model)``, then
``margin_lower_bound(ops, x, y, eps, method)`` — per sample the lower bound of
min_k (f_y − f_k) over the ball, certified only above the rounding tolerance of
:mod:`cmat.bounds.tolerance` (``proven``) — used by ``cmat verify`` and the
harness (``certified_mask``, ``CertifiedCheck``); ``training_margin_lower_bound`` is the
differentiable IBP/CROWN-IBP bound of certified training (:mod:`cmat.objectives.certified`).
"""
from cmat.bounds.margins import (  # noqa: F401
                                 BOUNDS,
                                 HARNESS_NEURONS,
                                 CertifiedCheck,
                                 certified_mask,
                                 margin_lower_bound,
                                 margin_spec,
                                 proven,
                                 training_margin_lower_bound,
)
from cmat.bounds.ops import network_ops, run_ops  # noqa: F401
