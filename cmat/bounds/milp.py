"""Exact verification by mixed-integer linear programming (Tjeng et al. 2019), solved by HiGHS
through ``scipy.optimize.milp``.

For one sample x, radius ε and specification row c (= e_y − e_k), the MILP minimises c·f(x')
over x' ∈ B(x, ε) ∩ [0, 1]ⁿ exactly: affine layers between ReLUs are composed into one matrix
(W, b); every ReLU a = max(z, 0) with pre-activation bounds l ≤ z ≤ u (from
:func:`cmat.bounds.crown.crown_bounds`, the best incomplete bounds cmat has) is

- stable active (l ≥ 0): a = z;  stable inactive (u ≤ 0): a = 0;
- unstable: a ≥ z, a ≥ 0, a ≤ u·δ, a ≤ z − l·(1 − δ), δ ∈ {0, 1} (big-M from l and u).

Soundness rules:

- **The verdict is the solver's proven lower bound, never its primal value.** HiGHS stops when
  its incumbent (``res.fun``, the margin at a point it found) is within the gap of its dual
  bound (``res.mip_dual_bound``, a bound on every point): relative gap 10⁻⁴ or absolute gap
  10⁻⁶, the latter not settable through scipy. So a minimum ≤ 0 can come back with a primal
  value in (0, 10⁻⁶]. A row's value (:func:`min_margin`) is the dual bound plus c·b_out (a
  model with no binary variable is an LP: its optimum, which the LP dual proves), lowered by
  ``SOLVER_TOL``·max(1, |v|) for HiGHS's tolerances, so a margin within the gap of zero is not
  certified. The tolerances are absolute, so the objective is first divided by its largest
  coefficient (measured: with the last layer scaled by 10⁻⁷, HiGHS reported a dual bound of
  +4·10⁻⁹ for a minimum of −2.5·10⁻¹²). A row whose time ran out counts when its bound is > 0.
- **Big-M bounds are computed in float64 and widened.** A pre-activation bound that is too
  tight, even by rounding, cuts feasible points out of the MILP and makes it unsound, while a
  looser one only adds binaries (the encoding stays exact). :func:`milp_lower_bound` recomputes
  CROWN's bounds in float64 on the float64 input box the MILP uses, and :func:`encode` widens
  whatever bounds it gets outward by max(10⁻⁷, 100·ε_mach(dtype))·max(1, |v|) (10⁻⁷ for
  float64 bounds, ≈1.2·10⁻⁵ for float32 ones).

What is verified is the float64 network, up to HiGHS's own tolerances (feasibility 10⁻⁷ in
the LPs, 10⁻⁶ for integrality); a solver's minimiser with margin ≤ 0 is only a candidate counterexample, which
:func:`cmat.verify.milp_counterexamples` checks on the model itself.

A sample is certified at ε when the proven lower bound of every row exceeds the rounding
tolerance τ of :mod:`cmat.bounds.tolerance` (the model certified runs in float32). Each sample gets
``time_limit`` seconds in all; a sample whose MILPs are not all decided is *unknown* and
counted as not certified (its lower bound is −∞), never as certified. Networks with MaxPool are
refused (use ``crown`` or ``alpha-crown`` there); the composed matrices are dense, so this is
for small networks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Optional

import numpy as np
import torch

from cmat.bounds.crown import crown_bounds
from cmat.bounds.ibp import input_box
from cmat.bounds.ops import MaxPool, ReLU, run_ops
from cmat.bounds.tolerance import certification_tolerance
from cmat.errors import CmatError


def _affine_matrix(segment: list, in_shape: tuple) -> tuple:
    """(W, b) of a composition of affine ops on flattened inputs: f(v) = W v + b."""
    d = int(np.prod(in_shape))
    with torch.no_grad():
        basis = torch.eye(d, dtype=torch.float64).view((d,) + tuple(in_shape))
        zero = torch.zeros((1,) + tuple(in_shape), dtype=torch.float64)
        ops64 = [_to64(op) for op in segment]
        b = run_ops(ops64, zero).flatten(1)[0]
        cols = run_ops(ops64, basis).flatten(1) - b
    return cols.T.numpy(), b.numpy()


def _to64(op):
    if dataclasses.is_dataclass(op):
        return dataclasses.replace(op, **{f.name: (getattr(op, f.name).double() if torch.is_tensor(getattr(op, f.name))
                                                   else getattr(op, f.name)) for f in dataclasses.fields(op)})
    return op


def widen(lb: torch.Tensor, u: torch.Tensor) -> tuple:
    """(lb, u) as float64 arrays moved outward by max(10⁻⁷, 100·ε_mach)·max(1, |v|), ε_mach of
    their dtype: big-M bounds that rounding cannot have made too tight."""
    rel = max(1e-7, 100 * torch.finfo(lb.dtype).eps)
    lb, u = lb.detach().double().flatten().cpu().numpy(), u.detach().double().flatten().cpu().numpy()
    return lb - rel * np.maximum(1.0, np.abs(lb)), u + rel * np.maximum(1.0, np.abs(u))


def float64_bounds(ops: list, x: torch.Tensor, eps: float) -> list:
    """CROWN's bounds of every op for one sample (x: C×H×W), computed in float64 on the float64
    box the MILP's input variables range over."""
    lo, hi = input_box(x[None].double(), torch.tensor([float(eps)], dtype=torch.float64))
    return crown_bounds([_to64(op) for op in ops], lo, hi)


def encode(ops: list, x: torch.Tensor, eps: float, bounds: list) -> dict:
    """The MILP's variables and constraints for one sample (x: C×H×W); ``bounds`` from
    :func:`cmat.bounds.crown.crown_bounds` on the batch holding this sample only (best:
    :func:`float64_bounds`), widened outward by :func:`widen` before use as big-M bounds."""
    from scipy.optimize import Bounds, LinearConstraint
    from scipy.sparse import csr_matrix, lil_matrix

    if any(isinstance(op, MaxPool) for op in ops):
        raise CmatError("the milp bound supports networks of affine layers and ReLUs (no MaxPool); "
                        "use --bound crown or alpha-crown for this network")
    relus = [i for i, op in enumerate(ops) if isinstance(op, ReLU)]
    x0 = x.double().flatten().numpy()
    lo_x, hi_x = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    var_lo, var_hi, integ = list(lo_x), list(hi_x), [0] * len(x0)
    rows, row_lo, row_hi = [], [], []  # (dict col → coef)
    prev = list(range(len(x0)))  # columns of the current layer's values
    start, shape = 0, tuple(x.shape)
    for i in relus:
        W, b = _affine_matrix(ops[start:i], shape)
        lb, u = widen(bounds[i][0][0], bounds[i][1][0])
        cur = []
        for j in range(W.shape[0]):
            w = {prev[c]: W[j, c] for c in np.flatnonzero(W[j])}
            a = len(var_lo)
            cur.append(a)
            if lb[j] >= 0:  # a = z
                var_lo.append(lb[j]), var_hi.append(u[j]), integ.append(0)
                rows.append({a: 1.0, **{c: -v for c, v in w.items()}}), row_lo.append(b[j]), row_hi.append(b[j])
            elif u[j] <= 0:  # a = 0
                var_lo.append(0.0), var_hi.append(0.0), integ.append(0)
            else:
                var_lo.append(0.0), var_hi.append(u[j]), integ.append(0)
                d = len(var_lo)
                var_lo.append(0.0), var_hi.append(1.0), integ.append(1)
                rows.append({a: 1.0, **{c: -v for c, v in w.items()}}), row_lo.append(b[j]), row_hi.append(np.inf)
                rows.append({a: 1.0, d: -u[j]}), row_lo.append(-np.inf), row_hi.append(0.0)
                rows.append({a: 1.0, d: -lb[j], **{c: -v for c, v in w.items()}})
                row_lo.append(-np.inf), row_hi.append(b[j] - lb[j])
        prev, start, shape = cur, i + 1, tuple(bounds[i][0].shape[1:])
    W_out, b_out = _affine_matrix(ops[start:], shape)
    n = len(var_lo)
    A = lil_matrix((max(len(rows), 1), n))
    for r, coefs in enumerate(rows):
        for c, v in coefs.items():
            A[r, c] = v
    constraints = [LinearConstraint(csr_matrix(A), row_lo or [0.0], row_hi or [0.0])] if rows else []
    return {"n": n, "n_inputs": len(x0), "last": prev, "W_out": W_out, "b_out": b_out, "constraints": constraints,
            "bounds": Bounds(np.array(var_lo), np.array(var_hi)), "integrality": np.array(integ)}


SOLVER_TOL = 1e-6  # HiGHS's absolute gap and integrality tolerance; 10× its LP feasibility tolerance


@contextlib.contextmanager
def native_stdout_silenced():
    """Send file descriptor 1 to /dev/null inside the block: HiGHS's MIP code prints debugging
    lines ("HighsMipSolverData::transformNewIntegerFeasibleSolution ...") straight to the C
    stdout even with ``disp`` off, between the lines a user reads."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def min_margin(problem: dict, c: np.ndarray, time_limit: Optional[float],
               node_limit: Optional[int] = None, threshold: float = 0.0) -> tuple:
    """(proven lower bound of c·f over the region, or None if undecided; seconds; the solver's
    best input or None): one MILP, stopped after ``time_limit`` seconds (None: no clock) or
    ``node_limit`` branch-and-bound nodes (None: no limit; a node budget makes the verdict
    independent of the machine's load, which a wall-clock budget does not). The objective is divided by
    its largest coefficient s (the solver's tolerances are absolute, so a network with small logits would
    otherwise sit inside them), and the bound is s·(d − SOLVER_TOL·max(1, |d|)) with d HiGHS's dual bound plus the
    constant term (the LP optimum when there is no binary variable), never its primal value.
    When the solve finished, d is within the gap (absolute 10⁻⁶, relative 10⁻⁴) below the exact
    minimum; when the time ran out it is still a bound, returned only if the result is >
    ``threshold`` (certified: the rounding tolerance), else None (unknown). The input is the incumbent's: a
    candidate counterexample when the bound is ≤ 0, to be checked on the model."""
    from scipy.optimize import milp

    obj = np.zeros(problem["n"])
    obj[problem["last"]] = c @ problem["W_out"]
    scale = float(np.abs(obj).max()) or 1.0
    t0 = time.time()
    with native_stdout_silenced():
        res = milp(obj / scale, constraints=problem["constraints"], integrality=problem["integrality"],
                   bounds=problem["bounds"], options=_solver_options(time_limit, node_limit))
    spent = time.time() - t0
    if not problem["integrality"].any():  # an LP: its optimum is proven by the LP dual
        dual = res.fun if res.status == 0 else None
    else:
        dual = res.mip_dual_bound if res.status in (0, 1) else None
    if dual is None or not np.isfinite(dual):
        return None, spent, None
    d = float(dual + c @ problem["b_out"] / scale)
    value = scale * (d - SOLVER_TOL * max(1.0, abs(d)))
    if res.status != 0 and value <= threshold:  # out of time and not proven either way
        return None, spent, None
    point = None if res.x is None else res.x[:problem["n_inputs"]]
    return value, spent, point


def _solver_options(time_limit: Optional[float], node_limit: Optional[int]) -> dict:
    options = {"disp": False}
    if time_limit is not None:
        options["time_limit"] = max(time_limit, 1e-3)
    if node_limit is not None:
        options["node_limit"] = int(node_limit)
    return options


def milp_lower_bound(ops: list, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, spec: torch.Tensor,
                     time_limit: Optional[float] = 10.0, stats: Optional[dict] = None,
                     node_limit: Optional[int] = None) -> torch.Tensor:
    """Per sample the proven lower bound (:func:`min_margin`; the exact minimum up to the
    solver's gap) over the rows of ``spec`` (N×K×C) of spec·f over B(x, ε), or −∞ when a row's
    bound is ≤ the rounding tolerance (not certified; the remaining rows are skipped) or the sample's ``time_limit``
    ran out undecided (unknown; ``time_limit`` None: no clock, ``node_limit`` nodes per MILP
    instead). ``stats`` counts solved/unknown samples and collects
    ``points``: (sample, ε, the solver's input) of rows whose bound is ≤ the tolerance."""
    out = torch.full((len(x),), -float("inf"), dtype=torch.float64)
    tol = certification_tolerance(ops, x, eps).double()  # the certified bit: bound > tol
    for n in range(len(x)):
        problem = encode(ops, x[n], float(eps[n]), float64_bounds(ops, x[n], float(eps[n])))
        left = None if time_limit is None else float(time_limit)
        best, finished = float("inf"), True
        for k in range(spec.shape[1]):
            value, spent, point = min_margin(problem, spec[n, k].double().numpy(), left, node_limit, float(tol[n]))
            left = None if left is None else left - spent
            if value is None:
                finished = False
                break
            best = min(best, value)
            if best <= tol[n]:
                if stats is not None and point is not None:  # a candidate counterexample (checked on the model)
                    stats.setdefault("points", []).append((n, float(eps[n]), point))
                break
        if finished and best > tol[n]:
            out[n] = best
        if stats is not None:
            key = "solved" if finished else "unknown"
            stats[key] = stats.get(key, 0) + 1
    return out.to(x.dtype)
