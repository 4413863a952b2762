"""Every built-in method, registered by importing it, and the lookup by name.

The one module that knows the full list: :mod:`cmat.cpg` (``cmat``) and :mod:`cmat.baselines`
(``packnet``, ``anp-vs``, ``at-finetune``, ``at-individual``). Each registers itself with
:func:`cmat.methods.register`; the engine, the bench and the CLI look methods up here.
"""
from __future__ import annotations

from cmat import cpg  # noqa: F401  (registers cmat)
from cmat.baselines import anp_vs, at_baselines, packnet  # noqa: F401  (register the baselines)
from cmat.errors import CmatError
from cmat.methods import METHODS


def available_methods() -> list:
    """The names of every registered method, sorted."""
    return sorted(METHODS)


def method_class(name: str):
    """The :class:`cmat.methods.Method` subclass registered as ``name`` (one-line error if unknown)."""
    if name not in METHODS:
        raise CmatError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name]
