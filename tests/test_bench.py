"""`cmat bench` over all five methods on toy-2task, ANP-VS pruning, plots."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cmat.cli import main
from cmat.metrics import IMAGE_TEST

METHODS = "cmat,packnet,anp-vs,at-finetune,at-individual"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = CliRunner().invoke(main, ["bench", "--tasks", "toy-2task", "--methods", METHODS, "--out", str(out),
                                    "--epochs", "1", "--eval-samples", "50", "--attacks", "clean,fgsm,pgd10,pgd40",
                                    "--set", "method_options={goal: none, prune_levels: 1, compact_epochs: 1, "
                                             "retrain_epochs: 1}",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_bench_table_has_every_method(bench_dir):
    out, printed = bench_dir
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [r["method"] for r in rows] == METHODS.split(",")
    assert list(rows[0])[:6] == ["method", "clean", "fgsm", "pgd10", "pgd40", "worst"]
    md = (out / "bench.md").read_text()
    for m in METHODS.split(","):
        assert f"| {m} |" in md and m in printed
        assert (out / f"{m}-s0" / "results.json").exists()
    # the paired tests and the budget are in the table a reader sees
    assert "McNemar" in md and "## Run budget" in md and "1 epoch per task" in md and "eval samples: 50" in md
    # the paired section is whole: its description, then its own header row (a lost header once
    # glued the first row to the description)
    assert "no correction for comparing" in md and "\n\n| method | images | seeds |" in md
    bench = json.loads((out / "bench.json").read_text())
    tests = bench["paired_tests"]
    assert tests["test"] == IMAGE_TEST and tests["column"] == "worst" and tests["seeds"] == 1
    assert set(tests["per_method"]) == set(METHODS.split(",")) - {"cmat"}
    from cmat.metrics import mcnemar_exact
    from cmat.outcomes import read_outcomes
    ref = np.concatenate(read_outcomes(out / "cmat-s0" / "eval.h5")["correct"]["worst"])
    for m, t in tests["per_method"].items():
        other = np.concatenate(read_outcomes(out / f"{m}-s0" / "eval.h5")["correct"]["worst"])
        mc = mcnemar_exact(ref, other)
        assert t["per_seed"]["0"] == mc and mc["n"] == 100
        im = t["images"]  # one seed: its image counts are that seed's McNemar discordant pairs
        assert (im["n_images"], im["n_seeds"], im["a_better"], im["b_better"]) == (100, 1, mc["a_only"], mc["b_only"])
        lo, hi = im["ci95_diff"]  # the primary test (crossed bootstrap): p and interval agree
        assert (im["p"] < 0.05) == (not lo <= 0 <= hi)
        assert im["mean_diff"] == pytest.approx(ref.mean() - other.mean())
        assert f"| {m} | 100 | 1 | {im['a_better']} | {im['b_better']} |" in md


def test_bench_reuses_finished_runs(bench_dir):
    out, _ = bench_dir
    stamps = {m: (out / f"{m}-s0" / "results.json").stat().st_mtime_ns for m in METHODS.split(",")}
    res = CliRunner().invoke(main, ["bench", "--tasks", "toy-2task", "--methods", METHODS, "--out", str(out),
                                    "--epochs", "1", "--eval-samples", "50", "--attacks", "clean,fgsm,pgd10,pgd40",
                                    "--set", "method_options={goal: none, prune_levels: 1, compact_epochs: 1, "
                                             "retrain_epochs: 1}",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert {m: (out / f"{m}-s0" / "results.json").stat().st_mtime_ns for m in stamps} == stamps


def test_bench_plots(bench_dir):
    out, _ = bench_dir
    res = CliRunner().invoke(main, ["plot", str(out), "--samples", "6"])
    assert res.exit_code == 0, res.output
    for name in ("tasks_bars", "acc_vs_eps", "acc_vs_steps", "matrix_cmat_pgd10"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 2000
    sweeps = json.loads((out / "plots" / "sweeps.json").read_text())
    assert set(sweeps) == set(METHODS.split(","))
    for curves in sweeps.values():
        eps_acc = [r["acc"] for r in curves["eps"]]
        assert eps_acc[0] >= eps_acc[-1]  # clean ≥ PGD at 2ε


def test_unknown_method_fails_before_training(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--tasks", "toy-2task", "--methods", "cmat,bogus",
                                    "--out", str(tmp_path / "b")])
    assert res.exit_code != 0
    assert res.output.strip().count("\n") == 0 and "bogus" in res.output
    assert not (tmp_path / "b" / "cmat-s0").exists()


def test_a_run_made_before_a_config_key_existed_is_still_reused(bench_dir, tmp_path):
    import shutil

    import yaml

    from cmat.bench import reusable_run
    from cmat.config import from_dict

    out, _ = bench_dir
    run = tmp_path / "packnet-s0"
    run.mkdir()
    for name in ("results.json", "config.yaml", "eval.h5"):
        shutil.copy(out / "packnet-s0" / name, run / name)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    cfg = from_dict(stored)
    assert reusable_run(run, cfg)
    del stored["train"]["optimizer"]  # as written before train.optimizer existed (its default: sgd)
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    assert reusable_run(run, cfg)
    cfg.train.optimizer = "adam"  # a real difference is still one
    assert not reusable_run(run, cfg)
