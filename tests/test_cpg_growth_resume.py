"""CMAT on toy-2task: growth keeps earlier tasks bit-identical (resume: tests/test_resume.py)."""

import torch

from cmat.cpg import CMAT
from tests.helpers import run_quick
from tests.helpers import CMAT_OPTS, trained_first_task


def test_unreachable_goal_grows_and_old_task_stays_identical(tmp_path):
    res = run_quick(tmp_path, method="cmat", epochs=1, eval={"attacks": ["clean", "pgd10"], "samples": 100},
                    method_options={**CMAT_OPTS, "goal": 1.5, "prune_levels": 1})
    rec = res["decisions"]["tasks"]
    assert rec[0]["width"] == 1.5 and rec[1]["width"] == 1.5
    # the goal is never met: compaction keeps what growth reached (within the 0.02 tolerance)
    assert rec[0]["compact_goal"] == rec[0]["val_after_grow"] < 1.5
    assert rec[0]["val_final"] >= rec[0]["compact_goal"] - 0.02
    for mat in res["acc"].values():
        assert mat[1][0] == mat[0][0]


def test_growth_on_second_task_keeps_first_bit_identical():
    method, trainer, seq = trained_first_task(CMAT, {**CMAT_OPTS, "goal": 0.0}, epochs=1)
    net = method.net.eval()
    x = seq[0].test.tensors()[0][:32]
    ref = net(x, 0)
    method.opts["goal"] = 1.5
    method.before_task(1, seq[1])
    method.train_task(1, seq[1], trainer)
    assert method.width == 1.5
    net.eval()
    assert torch.equal(net(x, 0), ref)
