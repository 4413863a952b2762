"""`cmat eval --save` and the subset check: outcomes written, compared with the run's own worst."""
import json
import shutil

import numpy as np

from cmat.outcomes import read_outcomes
from tests.test_cli import invoke


def test_re_evaluating_with_the_runs_own_attacks_reproduces_its_worst_exactly(individual_run, tmp_path):
    src, res = individual_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    # the run's own attacks on its own 200 images: evaluation is repeatable, so nothing differs
    out = invoke("eval", str(run), "--samples", "200", "--save", "--json")
    assert out.exit_code == 0, out.output
    table = json.loads((run / "eval-s200.json").read_text())
    check = table["check"]
    assert check["added"] == 0 and check["lost"] == 0
    assert check["run_robust"] == check["subset_robust"] == check["combined_robust"]
    assert [t["worst"]["acc"] for t in table["tasks"]] == res["acc"]["worst"][-1]
    saved, own = read_outcomes(run / "eval-s200.h5"), read_outcomes(run / "eval.h5")
    for j in range(2):
        assert np.array_equal(saved["correct"]["worst"][j], own["correct"]["worst"][j])


def test_a_stronger_subset_evaluation_counts_what_it_breaks(individual_run, tmp_path):
    src, _ = individual_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    out = invoke("eval", str(run), "--samples", "200", "--attacks", "clean,pgd40-cw,apgd-ce", "--save")
    assert out.exit_code == 0, out.output
    table = json.loads((run / "eval-s200.json").read_text())
    own, sub = read_outcomes(run / "eval.h5"), read_outcomes(run / "eval-s200.h5")
    added = lost = both = 0
    for j in range(2):
        pos = {int(i): k for k, i in enumerate(own["indices"][j])}
        run_ok = own["correct"]["worst"][j][[pos[int(i)] for i in sub["indices"][j]]]
        sub_ok = sub["correct"]["worst"][j]
        added, lost, both = added + (run_ok & ~sub_ok).sum(), lost + (~run_ok & sub_ok).sum(), both + (run_ok & sub_ok).sum()
    check = table["check"]
    assert (check["added"], check["lost"], check["combined_robust"]) == (added, lost, both)
    assert check["combined_robust"] <= min(check["run_robust"], check["subset_robust"])
    assert check["n"] == 400 and "broken here" in out.output
