"""The README's default-run table is what a bare ``cmat run`` computes at this commit.

docs/results/digits-default/ holds the results.json, config.yaml and eval.h5 of ``cmat run``
with no flags (CMAT + PGD-AT on digits-5split, seed 0) made at the commit its
``provenance.commit`` names; README.md renders its table from them (scripts/readme_tables.py).
This test (``slow``: about 9 minutes on one core, AutoAttack included; .ci/run runs it) trains
the same command again and compares task by task: every accuracy matrix, every CPG decision,
the per-image outcomes of eval.h5 and the parameter count, bit for bit. CPU float arithmetic
with the preset's one thread is deterministic on this machine class (measured: the committed
run and a rerun agree bit for bit); on another CPU a kernel's rounding can move single
images, and then this test names the task and column that moved. A change that moves the
numbers on purpose regenerates the committed run (docs/results.md, "The default run")."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmat.outcomes import read_outcomes

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "results" / "digits-default"


@pytest.mark.slow
def test_a_bare_cmat_run_recreates_the_committed_default_run(tmp_path):
    out = tmp_path / "run"
    cmat = [sys.executable, "-m", "cmat"]
    res = subprocess.run(cmat + ["run", "--out", str(out), "--no-progress"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-2000:]
    fresh = json.loads((out / "results.json").read_text())
    ref = json.loads((COMMITTED / "results.json").read_text())
    assert (fresh["method"], fresh["tasks"], fresh["seed"]) == ("cmat", "digits-5split", 0)
    assert fresh["task_names"] == ref["task_names"]
    for column, mat in ref["acc"].items():
        for i, row in enumerate(mat):
            assert fresh["acc"][column][i] == row, f"{column} after task {i + 1}: {fresh['acc'][column][i]} != {row}"
    for j, (a, b) in enumerate(zip(fresh["decisions"]["tasks"], ref["decisions"]["tasks"])):
        assert a == b, f"CPG decision of task {j + 1} differs"
    assert fresh["cost"]["params_total"] == ref["cost"]["params_total"]
    assert fresh["attacks"] == ref["attacks"] and fresh["eval"] == ref["eval"]
    mine, theirs = read_outcomes(out / "eval.h5"), read_outcomes(COMMITTED / "eval.h5")
    for column in theirs["correct"]:
        for j, bits in enumerate(theirs["correct"][column]):
            assert np.array_equal(mine["correct"][column][j], bits), f"{column}, task {j + 1}: per-image outcomes"
