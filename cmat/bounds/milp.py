"""Exact verification by mixed-integer linear programming (Tjeng et al. 2019), solved by HiGHS
through ``scipy.optimize.milp``.

For one sample x, radius ε and specification row c (= e_y − e_k), the MILP minimises c·f(x')
over x' ∈ B(x, ε) ∩ [0, 1]ⁿ exactly: affine layers between ReLUs are composed into one matrix
(W, b); every ReLU a = max(z, 0) with pre-activation bounds l ≤ z ≤ u (from
:func:`cmat.bounds.crown.crown_bounds`, the best incomplete bounds cmat has) is

- stable active (l ≥ 0): a = z;  stable inactive (u ≤ 0): a = 0;
- unstable: a ≥ z, a ≥ 0, a ≤ u·δ, a ≤ z − l·(1 − δ), δ ∈ {0, 1} (big-M from l and u).

A sample is certified at ε when the minimum of every row is > 0. Each sample gets
``time_limit`` seconds in all; a sample whose MILPs do not all finish is *unknown* and counted
as not certified (its lower bound is −∞), never as certified. Networks with MaxPool are
refused (use ``crown`` or ``alpha-crown`` there); the composed matrices are dense, so this is
for small networks.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import torch

from cmat.bounds.crown import crown_bounds
from cmat.bounds.ibp import input_box
from cmat.bounds.ops import MaxPool, ReLU, run_ops
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


def encode(ops: list, x: torch.Tensor, eps: float, bounds: list) -> dict:
    """The MILP's variables and constraints for one sample (x: C×H×W); ``bounds`` from
    :func:`cmat.bounds.crown.crown_bounds` on the batch holding this sample only."""
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
        l = bounds[i][0][0].double().flatten().numpy()
        u = bounds[i][1][0].double().flatten().numpy()
        cur = []
        for j in range(W.shape[0]):
            w = {prev[c]: W[j, c] for c in np.flatnonzero(W[j])}
            a = len(var_lo)
            cur.append(a)
            if l[j] >= 0:  # a = z
                var_lo.append(l[j]), var_hi.append(u[j]), integ.append(0)
                rows.append({a: 1.0, **{c: -v for c, v in w.items()}}), row_lo.append(b[j]), row_hi.append(b[j])
            elif u[j] <= 0:  # a = 0
                var_lo.append(0.0), var_hi.append(0.0), integ.append(0)
            else:
                var_lo.append(0.0), var_hi.append(u[j]), integ.append(0)
                d = len(var_lo)
                var_lo.append(0.0), var_hi.append(1.0), integ.append(1)
                rows.append({a: 1.0, **{c: -v for c, v in w.items()}}), row_lo.append(b[j]), row_hi.append(np.inf)
                rows.append({a: 1.0, d: -u[j]}), row_lo.append(-np.inf), row_hi.append(0.0)
                rows.append({a: 1.0, d: -l[j], **{c: -v for c, v in w.items()}})
                row_lo.append(-np.inf), row_hi.append(b[j] - l[j])
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


def min_margin(problem: dict, c: np.ndarray, time_limit: float) -> tuple:
    """(minimum of c·f over the region or None if unfinished, seconds, the minimising input or
    None): one MILP."""
    from scipy.optimize import milp

    obj = np.zeros(problem["n"])
    obj[problem["last"]] = c @ problem["W_out"]
    t0 = time.time()
    res = milp(obj, constraints=problem["constraints"], integrality=problem["integrality"],
               bounds=problem["bounds"], options={"time_limit": max(time_limit, 1e-3), "disp": False})
    if res.status != 0 or res.fun is None:
        return None, time.time() - t0, None
    return float(res.fun + c @ problem["b_out"]), time.time() - t0, res.x[:problem["n_inputs"]]


def milp_lower_bound(ops: list, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, spec: torch.Tensor,
                     time_limit: float = 10.0, stats: Optional[dict] = None) -> torch.Tensor:
    """Per sample the exact minimum over the rows of ``spec`` (N×K×C) of spec·f over B(x, ε), or
    −∞ when a row's MILP found a margin ≤ 0 (not certified; the remaining rows are skipped) or
    the sample's ``time_limit`` ran out (unknown). ``stats`` counts solved/unknown samples and
    collects ``points``: (sample, ε, minimising input) of rows whose minimum is ≤ 0."""
    out = torch.full((len(x),), -float("inf"), dtype=torch.float64)
    for n in range(len(x)):
        lo, hi = input_box(x[n:n + 1], eps[n:n + 1])
        bounds = crown_bounds(ops, lo, hi)
        problem = encode(ops, x[n], float(eps[n]), bounds)
        left, best, finished = float(time_limit), float("inf"), True
        for k in range(spec.shape[1]):
            value, spent, point = min_margin(problem, spec[n, k].double().numpy(), left)
            left -= spent
            if value is None:
                finished = False
                break
            best = min(best, value)
            if best <= 0:
                if stats is not None:  # a candidate counterexample (the caller checks it on the model)
                    stats.setdefault("points", []).append((n, float(eps[n]), point))
                break
        if finished and best > 0:
            out[n] = best
        if stats is not None:
            key = "solved" if finished else "unknown"
            stats[key] = stats.get(key, 0) + 1
    return out.to(x.dtype)
