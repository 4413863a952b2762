"""`cmat bench` over all five methods on toy-2task, ANP-VS pruning, plots."""
import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cmat.baselines.anp_vs import ANPVS
from cmat.nn.beta_bernoulli import kl_kumaraswamy_beta, kumaraswamy_mean
from cmat.cli import main
from cmat.engine import Trainer
from cmat.metrics import IMAGE_TEST
from cmat.tblog import RunLogger
from cmat.tasks import get_tasks
from tests.conftest import quick_config

METHODS = "cmat,packnet,anp-vs,at-finetune,at-individual"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = CliRunner().invoke(main, ["bench", "--tasks", "toy-2task", "--methods", METHODS, "--out", str(out),
                                    "--epochs", "2", "--eval-samples", "100", "--attacks", "clean,fgsm,pgd10,pgd40",
                                    "--set", "method_options={goal: none, prune_levels: 1, compact_epochs: 1, retrain_epochs: 1}",
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
    assert "McNemar" in md and "## Run budget" in md and "2 epochs" in md and "eval samples: 100" in md
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
        assert t["per_seed"]["0"] == mc and mc["n"] == 200
        im = t["images"]  # one seed: the image-level sign test is that seed's McNemar test
        assert (im["n_images"], im["n_seeds"], im["a_better"], im["b_better"]) == (200, 1, mc["a_only"], mc["b_only"])
        assert im["p"] == pytest.approx(mc["p"], rel=1e-12)
        assert im["mean_diff"] == pytest.approx(ref.mean() - other.mean())
        assert f"| {m} | 200 | 1 | {im['a_better']} | {im['b_better']} |" in md


def test_bench_reuses_finished_runs(bench_dir):
    out, _ = bench_dir
    stamps = {m: (out / f"{m}-s0" / "results.json").stat().st_mtime_ns for m in METHODS.split(",")}
    res = CliRunner().invoke(main, ["bench", "--tasks", "toy-2task", "--methods", METHODS, "--out", str(out),
                                    "--epochs", "2", "--eval-samples", "100", "--attacks", "clean,fgsm,pgd10,pgd40",
                                    "--set", "method_options={goal: none, prune_levels: 1, compact_epochs: 1, retrain_epochs: 1}",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert {m: (out / f"{m}-s0" / "results.json").stat().st_mtime_ns for m in stamps} == stamps


def test_bench_plots(bench_dir):
    out, _ = bench_dir
    res = CliRunner().invoke(main, ["plot", str(out), "--samples", "12"])
    assert res.exit_code == 0, res.output
    for name in ("tasks_bars", "acc_vs_eps", "acc_vs_steps", "matrix_cmat_pgd10"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 2000
    sweeps = json.loads((out / "plots" / "sweeps.json").read_text())
    assert set(sweeps) == set(METHODS.split(","))
    for curves in sweeps.values():
        eps_acc = [r["acc"] for r in curves["eps"]]
        assert eps_acc[0] >= eps_acc[-1]  # clean ≥ PGD at 2ε


def test_unknown_method_fails_before_training(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--tasks", "toy-2task", "--methods", "cmat,bogus", "--out", str(tmp_path / "b")])
    assert res.exit_code != 0
    assert res.output.strip().count("\n") == 0 and "bogus" in res.output
    assert not (tmp_path / "b" / "cmat-s0").exists()


def test_kumaraswamy_mean_and_kl_against_sampling():
    a, b = torch.tensor([2.0, 0.5]), torch.tensor([3.0, 1.5])
    u = torch.rand(200000, 2, generator=torch.Generator().manual_seed(0))
    samples = (1 - (1 - u) ** (1 / b)) ** (1 / a)
    assert torch.allclose(samples.mean(0), kumaraswamy_mean(a, b), atol=3e-3)
    # KL to the Beta prior is a Monte-Carlo expectation of log q − log p
    from torch.distributions import Beta, Kumaraswamy

    q, p = Kumaraswamy(a, b), Beta(torch.tensor(2.0), torch.tensor(2.0))
    x = q.sample((200000,)).clamp(1e-6, 1 - 1e-6)
    mc = (q.log_prob(x) - p.log_prob(x)).mean(0)
    assert torch.allclose(kl_kumaraswamy_beta(a, b, 2.0, 2.0, terms=50), mc, atol=0.03)


def test_anp_vs_prunes_channels_and_suppresses_vulnerability():
    cfg = quick_config(method="anp-vs", epochs=4, method_options={"kl_weight": 5.0, "vs_weight": 1.0, "mask_lr": 0.1})
    seq = get_tasks("toy-2task", seed=0)
    torch.manual_seed(0)
    method = ANPVS(cfg, seq, "cpu")
    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(None), progress=False)
    method.before_task(0, seq[0])
    net = method.nets[0]
    vul = []
    method.trainer_objective = trainer.objective
    fn = method.loss(net, len(seq[0].train))
    x, y = seq[0].val.tensors()
    x, y = x[:128], y[:128]
    net.train()
    fn(None, x, y, torch.Generator().manual_seed(1))
    vul.append(method.last_vulnerability)
    method.train_task(0, seq[0], trainer)
    net.train()
    fn(None, x, y, torch.Generator().manual_seed(1))
    vul.append(method.last_vulnerability)
    rec = method.decisions["tasks"][0]
    assert rec["channels_pruned"] > 0, rec
    assert vul[1] < vul[0]


def test_bench_cmat_reads_its_goals_from_the_at_individual_runs(tmp_path):
    """With at-individual in the list, CMAT's goals come from those runs (no second individual
    training): its passes are exactly a standalone CMAT's minus at-individual's (no growth, one
    compaction level, so the schedule does not depend on the goal), and its goals are what a
    standalone run reading the same directory decides."""
    opts = "method_options={max_width: 1.0, prune_levels: 1, compact_epochs: 1}"
    common = ["--tasks", "toy-2task", "--epochs", "1", "--eval-samples", "40", "--attacks", "clean,pgd10",
              "--set", opts, "--no-progress"]
    res = CliRunner().invoke(main, ["bench", "--methods", "cmat,at-individual", "--out", str(tmp_path / "b"), *common])
    assert res.exit_code == 0, res.output
    ind_dir = tmp_path / "b" / "at-individual-s0"
    cfg = (tmp_path / "b" / "cmat-s0" / "config.yaml").read_text()
    assert f"individual_run: {ind_dir}" in cfg
    assert "read from the at-individual run" in (tmp_path / "b" / "bench.md").read_text()
    rows = list(csv.DictReader((tmp_path / "b" / "bench.csv").open()))
    assert [r["method"] for r in rows] == ["cmat", "at-individual"]  # the user's order
    res = CliRunner().invoke(main, ["run", "--method", "cmat", "--out", str(tmp_path / "alone"), *common])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["run", "--method", "cmat", "--out", str(tmp_path / "reading"), *common,
                                    "--set", f"method_options.individual_run={ind_dir}"])
    assert res.exit_code == 0, res.output
    load = lambda d: json.loads((d / "results.json").read_text())  # noqa: E731
    bench_cmat, ind, alone, reading = (load(tmp_path / "b" / "cmat-s0"), load(ind_dir), load(tmp_path / "alone"),
                                       load(tmp_path / "reading"))
    assert bench_cmat["cost"]["grad_evals"] == alone["cost"]["grad_evals"] - ind["cost"]["grad_evals"] > 0
    assert [d["goal"] for d in bench_cmat["decisions"]["tasks"]] == [d["goal"] for d in reading["decisions"]["tasks"]]
