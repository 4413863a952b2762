"""How a rerun is compared with a committed recording (a golden, the committed default run).

Float arithmetic with the presets' one thread is bit-exact on one CPU kind, not across kinds:
another ISA (AVX2 vs AVX-512 vs AMX) runs other kernels, one rounding moves an image, and
training is chaotic, so CMAT's decisions and single images can move. So:

- **Same CPU** (:func:`same_cpu`: the recording's ``cmat.provenance.cpu_fingerprint`` equals
  this machine's: model name, torch's CPU capability, kernel flags): bit for bit, every number.
- **Another CPU** (or a recording without a fingerprint): the statistical rule. For every task
  and column (attack), the per-image outcomes of the rerun and of the recording are compared by
  the exact paired McNemar test (:func:`outcome_drift`, same images, α = 0.05, two-sided, no
  correction for the number of tests: stricter than a corrected rule); where a spread over seeds
  was measured, the rerun's average must lie within ``SPREAD_K`` sample standard deviations of
  the recorded one (:func:`within_spread`). Decisions, weights and bounds are not compared there,
  because a chaotic training path legitimately changes them. The test names both machines
  (:func:`fallback_note`) so a reader sees which rule passed.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from cmat.metrics import mcnemar_exact
from cmat.provenance import cpu_fingerprint, describe_cpu

ALPHA = 0.05
SPREAD_K = 2.0  # a rerun's average within 2 seed standard deviations of the recorded average


def same_cpu(recorded: Optional[dict]) -> bool:
    """Whether this machine's CPU fingerprint equals the recorded one (None: not recorded)."""
    return recorded is not None and dict(recorded) == cpu_fingerprint()


def fallback_note(recorded: Optional[dict], what: str, rule: str = "the statistical rule (tests/drift.py)") -> str:
    """Names both machines and the rule; warned (pytest lists it) whenever a test falls back."""
    made = describe_cpu(recorded) if recorded else "a CPU it does not record"
    note = (f"{what} was recorded on {made}; this machine is {describe_cpu(cpu_fingerprint())}: "
            f"compared by {rule}, not bit for bit")
    warnings.warn(note, UserWarning, stacklevel=2)
    return note


def outcome_drift(fresh: dict, ref: dict, alpha: float = ALPHA) -> list:
    """``fresh``/``ref``: ``{column: [bool array per task]}`` on the same images. Returns one line
    per (column, task) whose outcomes differ significantly (exact McNemar p < ``alpha``)."""
    bad = []
    for column, tasks in ref.items():
        assert column in fresh, f"column {column} missing from the rerun"
        for j, bits in enumerate(tasks):
            a, b = np.asarray(fresh[column][j], dtype=bool), np.asarray(bits, dtype=bool)
            assert a.shape == b.shape, f"{column}, task {j + 1}: {a.shape} vs {b.shape} images"
            test = mcnemar_exact(a, b)
            if test["p"] < alpha:
                bad.append(f"{column}, task {j + 1}: rerun {int(a.sum())}/{a.size} vs recorded {int(b.sum())}/"
                           f"{b.size} (only rerun {test['a_only']}, only recorded {test['b_only']}, p {test['p']:.3g})")
    return bad


def within_spread(fresh_avg: float, ref_avg: float, seed_std: float, k: float = SPREAD_K) -> bool:
    """|rerun − recorded| ≤ k·σ_seeds: the average moved no more than reseeding moves it."""
    return abs(fresh_avg - ref_avg) <= k * seed_std


def bits_to_str(bits) -> str:
    return "".join("1" if b else "0" for b in np.asarray(bits, dtype=bool))


def str_to_bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")
