"""The cross-machine rule of tests/drift.py decides what it says it decides."""
import numpy as np

from cmat.provenance import cpu_fingerprint
from tests.drift import outcome_drift, same_cpu, str_to_bits, bits_to_str, within_spread


def test_same_cpu_only_for_an_equal_fingerprint():
    here = cpu_fingerprint()
    assert same_cpu(dict(here))
    assert not same_cpu(None)  # a recording without a fingerprint is never taken as this machine
    assert not same_cpu({**here, "capability": "AVX2"})
    assert not same_cpu({**here, "model_id": (here.get("model_id") or 0) + 1})


def test_a_few_moved_images_pass_and_a_real_shift_fails():
    rng = np.random.default_rng(0)
    ref = rng.random(200) < 0.9
    moved = ref.copy()
    moved[:3] = ~moved[:3]  # three images moved: rounding, not a change
    assert outcome_drift({"worst": [moved]}, {"worst": [ref]}) == []
    shifted = ref.copy()
    shifted[np.flatnonzero(ref)[:20]] = False  # twenty images lost, none gained: p ≈ 2e-6
    bad = outcome_drift({"worst": [moved, shifted]}, {"worst": [ref, ref]})
    assert len(bad) == 1 and bad[0].startswith("worst, task 2")


def test_the_average_rule_and_the_bit_strings():
    assert within_spread(0.880, 0.902, 0.0153) and not within_spread(0.86, 0.902, 0.0153)
    bits = np.array([True, False, True, True])
    assert bits_to_str(bits) == "1011" and np.array_equal(str_to_bits("1011"), bits)
