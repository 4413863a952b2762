"""Continual-learning metrics against hand-computed matrices."""
import numpy as np
import pytest

from cmat.metrics import average_accuracy, backward_transfer, forgetting, macro_f1, summarize

ACC = [[0.9],
       [0.7, 0.8],
       [0.6, 0.85, 0.5]]


def test_average_accuracy():
    assert average_accuracy(ACC) == pytest.approx((0.6 + 0.85 + 0.5) / 3)


def test_bwt_hand_computed():
    # (0.6 - 0.9) + (0.85 - 0.8) over 2 tasks
    assert backward_transfer(ACC) == pytest.approx((-0.3 + 0.05) / 2)


def test_forgetting_hand_computed():
    # task 0: max(0.9, 0.7) - 0.6 = 0.3; task 1: max(0.8) - 0.85 = -0.05
    assert forgetting(ACC) == pytest.approx((0.3 - 0.05) / 2)


def test_forgetting_uses_max_not_diagonal():
    acc = [[0.5], [0.9, 0.8], [0.4, 0.8, 0.7]]
    assert forgetting(acc) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.8)) / 2)
    assert backward_transfer(acc) == pytest.approx(((0.4 - 0.5) + 0.0) / 2)


def test_single_task_and_no_forgetting():
    assert summarize([[0.7]]) == {"acc": 0.7, "bwt": 0.0, "forgetting": 0.0}
    flat = [[0.9], [0.9, 0.8]]
    assert backward_transfer(flat) == 0.0 and forgetting(flat) == 0.0


def test_malformed_matrix_rejected():
    with pytest.raises(ValueError):
        average_accuracy([[0.1, 0.2]])


def test_macro_f1_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
    assert macro_f1(p, y, 5) == pytest.approx(sk.f1_score(y, p, average="macro", labels=range(5), zero_division=0))


# the paired image test (crossed bootstrap over images and seeds): tests/test_stats.py


def test_seed_spread_is_the_sample_standard_deviation():
    from cmat.metrics import seed_spread

    s = seed_spread([0.90, 0.92])
    assert s["mean"] == pytest.approx(0.91) and s["std"] == pytest.approx(0.02 / np.sqrt(2))  # ddof 1, not 0.01
    assert seed_spread([0.9])["std"] is None
