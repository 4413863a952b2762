"""`cmat eval --save` and the subset check: outcomes written, compared with the run's own worst."""
import json
import shutil

import numpy as np

from cmat.outcomes import read_outcomes
from tests.helpers import invoke


def test_re_evaluating_with_the_runs_own_attacks_reproduces_its_worst_exactly(individual_run, tmp_path):
    src, res = individual_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    # the run's own attacks on its own 200 images: evaluation is repeatable, so nothing differs
    out = invoke("eval", str(run), "--save", "--json")  # the run's own images: eval-all
    assert out.exit_code == 0, out.output
    table = json.loads((run / "eval-all.json").read_text())
    check = table["check"]
    assert check["added"] == 0 and check["lost"] == 0
    assert check["run_robust"] == check["subset_robust"] == check["combined_robust"]
    assert [t["worst"]["acc"] for t in table["tasks"]] == res["acc"]["worst"][-1]
    saved, own = read_outcomes(run / "eval-all.h5"), read_outcomes(run / "eval.h5")
    for j in range(2):
        assert np.array_equal(saved["correct"]["worst"][j], own["correct"]["worst"][j])


def test_a_stronger_subset_evaluation_counts_what_it_breaks(individual_run, tmp_path):
    src, _ = individual_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    out = invoke("eval", str(run), "--attacks", "clean,pgd40-cw,apgd-ce", "--save")
    assert out.exit_code == 0, out.output
    table = json.loads((run / "eval-all.json").read_text())
    own, sub = read_outcomes(run / "eval.h5"), read_outcomes(run / "eval-all.h5")
    added = lost = both = 0
    for j in range(2):
        pos = {int(i): k for k, i in enumerate(own["indices"][j])}
        run_ok = own["correct"]["worst"][j][[pos[int(i)] for i in sub["indices"][j]]]
        sub_ok = sub["correct"]["worst"][j]
        added, lost, both = (added + (run_ok & ~sub_ok).sum(), lost + (~run_ok & sub_ok).sum(),
                             both + (run_ok & sub_ok).sum())
    check = table["check"]
    assert (check["added"], check["lost"], check["combined_robust"]) == (added, lost, both)
    assert check["combined_robust"] <= min(check["run_robust"], check["subset_robust"])
    assert check["n"] == 400 and "broken here" in out.output


def test_a_bench_report_adds_the_whole_set_re_evaluation_and_pairs_on_the_worst_over_both(
        individual_run, finetune_run, tmp_path):
    from cmat.errors import CmatError
    from cmat.outcomes import worst_over
    from cmat.report import render_report
    from cmat.summary import summary_markdown

    bench = tmp_path / "bench"
    for method, (src, _) in (("at-individual", individual_run), ("at-finetune", finetune_run)):
        shutil.copytree(src, bench / f"{method}-s0")
    (bench / "bench.json").write_text(json.dumps({"seeds": [0], "rows": [{"method": "at-individual"},
                                                                         {"method": "at-finetune"}]}))
    assert "Re-evaluated" not in render_report(bench)
    assert "| all |" not in summary_markdown(bench)  # the front-page line: `all` only once every run has one
    for method in ("at-individual", "at-finetune"):
        out = invoke("eval", str(bench / f"{method}-s0"), "--attacks", "clean,pgd40-cw,apgd-ce-r2", "--save")
        assert out.exit_code == 0, out.output
    md = render_report(bench)
    assert "## Re-evaluated under stronger attacks" in md and "on `all` (re-evaluated)" in md
    for method in ("at-individual", "at-finetune"):  # `all` = the AND of both evaluations, image by image
        run = bench / f"{method}-s0"
        own, new = read_outcomes(run / "eval.h5"), read_outcomes(run / "eval-all.h5")
        both = sum(int((a & b).sum()) for a, b in zip(own["correct"]["worst"], new["correct"]["worst"]))
        n = sum(len(i) for i in own["indices"])
        _, combined = worst_over(run, ("eval.h5", "eval-all.h5"))
        assert sum(int(c.sum()) for c in combined) == both
        row = next(line for line in md.split("## Re-evaluated")[1].splitlines() if line.startswith(f"| {method} |"))
        assert f"{both / n:.3f} [" in row.split("|")[-3]
        per_task = [int((a & b).sum()) / len(a) for a, b in zip(own["correct"]["worst"], new["correct"]["worst"])]
        line = next(x for x in summary_markdown(bench).splitlines() if x.startswith(f"| {method} |"))
        assert line.split("|")[5].strip() == f"{np.mean(per_task):.3f}"  # one seed: the task average, no ±
    partial = tmp_path / "partial"  # an evaluation of other images cannot be combined: one line
    shutil.copytree(bench / "at-individual-s0", partial)
    assert invoke("eval", str(partial), "--samples", "60", "--save").exit_code == 0
    assert json.loads((partial / "eval-s60.json").read_text())["check"] is None  # not a subset of the run's 200
    try:
        worst_over(partial, ("eval.h5", "eval-s60.h5"))
        raise AssertionError("combined a subset as if it covered the run's images")
    except CmatError as err:
        assert "did not evaluate image" in str(err)


def test_re_evaluation_at_another_eps_is_saved_apart_and_never_merged_into_the_runs_worst(individual_run, tmp_path):
    import yaml

    from cmat.report import render_report

    src, _ = individual_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    threat = yaml.safe_load((run / "config.yaml").read_text())["threat"]
    eps, alpha = float(threat["eps"]), float(threat["alpha"])
    out = invoke("eval", str(run), "--attacks", "clean,pgd10", "--eps", repr(4 * eps), "--save", "--json")
    assert out.exit_code == 0, out.output
    big = json.loads((run / f"eval-eps{4 * eps:.6g}-all.json").read_text())
    assert not (run / "eval-all.json").exists()  # the run's own ε keeps its name free
    assert big["eps"] == 4 * eps and big["check"] is None  # another ε: no check against the run's worst
    params = big["attacks"]["pgd10"]
    assert params["eps"] == 4 * eps and params["alpha"] == max(4 * alpha, 2.5 * 4 * eps / 10)
    own = read_outcomes(run / "eval.h5")
    assert [t["clean"]["n"] for t in big["tasks"]] == [len(i) for i in own["indices"]]
    # a 4× larger ball: PGD-10 keeps no more images than the run's own PGD-10 at ε (strength ordering)
    small = json.loads(invoke("eval", str(run), "--attacks", "clean,pgd10", "--json").output)
    assert big["mean"]["pgd10"] <= small["mean"]["pgd10"] and big["mean"]["pgd10"] < big["mean"]["clean"]
    assert "Re-evaluated" not in render_report(run)
    bad = invoke("eval", str(run), "--eps", "20/x")
    assert bad.exit_code != 0 and "20/255" in bad.output and "Traceback" not in bad.output
    assert len([ln for ln in bad.output.splitlines() if ln.strip()]) == 1
