"""When a margin bound certifies: the one definition every bound uses.

An image is certified at ε when the lower bound L of its margins min_k (f_y − f_k) over the
ball B(x, ε) exceeds a tolerance τ that covers floating-point rounding (:func:`certified`), not
merely 0: the network as it runs is evaluated in floating point, and so is the bound, so an
exactly attained bound (true minimum 0, or a tiny positive number) can be off by a few ulps
either way — a fuzz found float32 margins 3·10⁻⁸ below a bound that said 0.

The tolerance (:func:`certification_tolerance`), per image:

    τ = K · u · S,     K = 2¹² = 4096,     u = the unit roundoff of x's dtype
                                            (finfo.eps / 2: 5.96·10⁻⁸ for float32),
    S = max_k (|A|·|h| + |b|)_k  (:func:`output_term_magnitude`): the magnitude of the terms the
        logits are summed from at the image, h the input of the affine layers after the last
        nonlinearity (S ≥ M = max_k |f_k(x)|).

Why this form:

- Rounding is relative: a computed sum is within a few ulps of the magnitude of what it sums,
  and S is that magnitude for the logits (and so for a margin bound, a difference of them).
  Logits near 0 by cancellation keep a large S. (An earlier form, K·u·(1 + M), had an absolute
  floor of K·u ≈ 2.4·10⁻⁴ that refused every certificate of a network whose logits are scaled
  by 10⁻⁷, whose decisions and robustness are those of the unscaled one: S scales with it.) (The IBP box of the
  logits over the ball was tried as the scale: it grows with ε and cost MILP's exact critical ε
  several bisection steps on a small MLP; the logits at x do not.)
- K is calibrated, with headroom, on measured rounding: the same bound computed in float32 and
  in float64 on the same network (toy smallcnn with BatchNorm, a ReLU MLP, cnn-ibp at 28×28,
  ε 0.001 and 0.01) differs by at most 299·u·(1 + M) (so ≤ 299·u·(1 + S)) (IBP on cnn-ibp, where BatchNorm's scale
  and shift cancel; 58 on the toy smallcnn) and 3.1·u·(1 + M) for CROWN; the float32 logits
  differ from the float64 ones by < 1·u·(1 + M). K = 4096 leaves ≥ 13× over the worst of these
  (tests/test_cert_tolerance.py re-measures the toy smallcnn, asking for ≥ 10×).
- Not the worst-case bound: Higham's a-priori bound (γ_n per dot product, propagated through
  |W|) is rigorous but, over a few convolution layers, 10³–10⁶ times the measured rounding —
  it would certify nothing (on the toy smallcnn it exceeds the logits themselves).

What τ ignores: it is a calibrated margin, not a proof about rounding — a network whose sums
cancel far more than these (huge weights with tiny outputs) could exceed it; and rounding in
the data pipeline before the network. MILP verifies the float64 network, so its own rounding is
covered by the solver's tolerance (:mod:`cmat.bounds.milp`); the model that is certified runs
in x's dtype, so the same τ applies on top.
"""
from __future__ import annotations

import torch

from cmat.bounds.ops import MaxPool, ReLU, run_ops

K_ULPS = 4096  # calibrated: ≥ 13× the largest measured float32 rounding of a bound (module docstring)


def certification_tolerance(ops: list, x: torch.Tensor, eps) -> torch.Tensor:
    """Per image, τ = K·u·S (module docstring), in x's dtype. ``eps`` (the ball's radius) does not
    enter τ; it is taken so that every caller states which check τ is for."""
    with torch.no_grad():
        scale = output_term_magnitude(ops, x).flatten(1).amax(1)
    u = torch.finfo(x.dtype).eps / 2  # unit roundoff (round to nearest)
    return K_ULPS * u * scale


def output_term_magnitude(ops: list, x: torch.Tensor) -> torch.Tensor:
    """S = |A|·|h| + |b| through the affine ops after the last nonlinearity, h that layer's input
    at x: the size of the terms the logits are summed from (≥ |f(x)|, and unlike |f(x)| not
    shrunk by cancellation, and scaled with the network: no absolute floor)."""
    last = max((i for i, op in enumerate(ops) if isinstance(op, (ReLU, MaxPool))), default=-1)
    m = run_ops(ops[:last + 1], x).abs()
    for op in ops[last + 1:]:
        m = op.abs_linear(m) + op.forward(torch.zeros_like(m[:1])).abs()
    return m


def certified(lower: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
    """The certified bit: the margin lower bound exceeds the rounding tolerance (L > τ)."""
    return lower > tolerance.to(lower.dtype)
