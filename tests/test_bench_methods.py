"""ANP-VS's pieces (Kumaraswamy posterior, channel pruning, vulnerability suppression) and CMAT
reading its goals from a bench's at-individual runs."""
import csv
import json

import torch
from click.testing import CliRunner

from cmat.baselines.anp_vs import ANPVS
from cmat.cli import main
from cmat.engine import Trainer
from cmat.nn.beta_bernoulli import kl_kumaraswamy_beta, kumaraswamy_mean
from cmat.tasks import get_tasks
from cmat.tblog import RunLogger
from tests.helpers import quick_config


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
