"""The one check of a user-given number: finite, in a range, an integer where one is needed.

Every number a user can set goes through :func:`number` — configuration keys
(:mod:`cmat.config`), method options (:class:`cmat.methods.Option`) and attack parameters
(:mod:`cmat.attacks`) — so every wrong value reads the same way: one :class:`CmatError` line
naming the key, the valid range and the value given.
"""
from __future__ import annotations

import math
import numbers

from cmat.errors import CmatError


def _bound(v) -> str:
    return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:g}"


def number(where: str, value, lo=-math.inf, hi=math.inf, *, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False):
    """``value`` (an int when ``integer``, else a float) if it is a finite real number (not a
    bool) in the interval from ``lo`` to ``hi`` (open at an end where asked); otherwise a
    one-line :class:`CmatError`: ``where must be a number in [lo, hi], got value``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        what = "an integer" if integer else "a number"
        raise CmatError(f"{where} must be {what} in {left}{_bound(lo)}, {_bound(hi)}{right}, got {value!r}")
    return int(value) if integer else float(value)


def choice(where: str, value, allowed) -> str:
    """``value`` if it is one of ``allowed``, else ``where must be a, b or c, got value``."""
    if value not in allowed:
        names = list(allowed)
        listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        raise CmatError(f"{where} must be {listed}, got {value!r}")
    return value
