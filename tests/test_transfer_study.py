"""``cmat transfer-study``: every row and column, reuse, frozen means bit-identical, exact cost."""
import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cmat
from cmat.cli import main
from cmat.errors import CmatError
from cmat.plots import pareto_front
from cmat.tblog import RunLogger
from cmat.transfer import default_tl_k, train_transfer, weight_layers
from cmat.transfer_study import CSV_COLUMNS, plan, run_study
from cmat.tasks import get_tasks
from tests.helpers import quick_config, tiny_config





@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    lines = []
    result = run_study(tiny_config(), out, jobs=2, verify_samples=3, verify_iters=3, progress=False, say=lines.append)
    return out, result, lines


def test_study_writes_every_row_and_column(study):
    out, result, lines = study
    with open(out / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    cells = {(r["source_objective"], r["strategy"], r["target_objective"]) for r in rows}
    strategies = ["linear", f"tl-{default_tl_k('smallcnn')}", "finetune", "lwf"]
    expected = {(s, st, t) for s in ("standard", "pgd") for st in strategies for t in ("standard", "pgd")}
    expected |= {("none", "scratch", "standard"), ("none", "scratch", "pgd")}
    assert cells == expected and len(rows) == 18
    for r in rows:
        assert all(r[c] != "" for c in CSV_COLUMNS)
        clean, pgd10, pgd40, worst, cert = (float(r[c]) for c in ("clean", "pgd10", "pgd40", "worst", "certified"))
        assert 0 <= worst <= min(pgd10, pgd40) <= max(pgd10, pgd40) <= clean <= 1
        assert cert <= worst  # a sound certificate is never broken by an attack
    for name in ("study.md", "study.json", "critical_eps.csv", "pareto.png", "bars.png", "ecdf.png", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    verona = list(csv.reader(open(out / "critical_eps.csv")))
    assert verona[0] == ["network", "image_id", "original_label", "epsilon_value", "smallest_sat_value",
                         "total_time", "verifier"]
    for row in verona[1:]:  # lower end ≤ upper end per sample
        assert float(row[3]) <= float(row[4])
    assert any("[pgd-linear-standard]" in line for line in lines)
    assert (out / "sources" / "pgd" / "results.json").exists()


def test_certified_images_are_robust_per_image(study):
    out, result, _ = study
    for cell in plan(result["strategies"]):
        rec = json.loads((out / "cells" / cell.name / "cell.json").read_text())
        cert = np.asarray(rec["outcomes"]["certified"], bool)
        worst = np.asarray(rec["outcomes"]["worst"], bool)
        assert not (cert & ~worst).any(), cell.name
        assert len(rec["indices"]) == len(cert) == 24


def test_cost_columns_are_exact(study):
    _, result, _ = study
    rows = {(r["source_objective"], r["strategy"], r["target_objective"]): r for r in result["rows"]}
    steps = tiny_config().objective.steps
    n_train = len(get_tasks("toy-2task", seed=0)[1].train)
    for (src, strategy, target), r in rows.items():
        assert r["grad_evals"] == n_train * (1 if target == "standard" else steps + 1)  # one epoch
    ratios = result["ratios_vs_reference"]
    assert ratios["pgd-linear-standard"]["grad_evals"] == pytest.approx(1 / (steps + 1))


def test_rerun_reuses_every_finished_piece(study):
    out, result, _ = study
    before = (out / "study.csv").read_text()
    lines = []
    again = run_study(tiny_config(), out, jobs=1, verify_samples=3, verify_iters=3, progress=False, say=lines.append)
    assert sum("reusing" in line for line in lines) == 20  # 2 sources + 18 cells
    assert (out / "study.csv").read_text() == before
    assert again["rows"] == result["rows"]


def test_transfer_keeps_frozen_weights_bit_identical_and_counts_passes(individual_run):
    """linear under a PGD target objective: the attack runs through the frozen extractor in
    train mode; every extractor parameter and BN buffer equals the source's bit for bit, and the
    pass count is epochs × images × (steps + 1)."""
    out, _ = individual_run
    source = cmat.load(out).model(0)
    seq = get_tasks("toy-2task", seed=0)
    cfg = quick_config(method="at-individual", train={"epochs": 2})
    model, _, passes = train_transfer(source, "linear", "pgd", seq[1], 1, cfg, torch.device("cpu"), RunLogger(None),
                                      progress=False)
    src_state = source.net.features.state_dict()
    for name, value in model.features.state_dict().items():
        assert torch.equal(value, src_state[name]), name
    assert torch.equal(model.norm.mean, source.net.norms[0].mean)
    assert passes == 2 * len(seq[1].train) * (cfg.objective.steps + 1)


def test_default_tl_k_is_the_last_unit_and_what_follows():
    from cmat.nn.backbones import ARCHS
    from torch import nn

    feats, _ = ARCHS["smallcnn"](1, 0.25, nn.Conv2d, nn.Linear, nn.BatchNorm2d, 8)
    layers = weight_layers(feats)
    k = default_tl_k("smallcnn")
    assert isinstance(layers[-k], nn.Conv2d) and all(isinstance(m, nn.Linear) for m in layers[-k + 1:])


def test_pareto_front():
    pts = [(10, 0.5), (1, 0.2), (5, 0.6), (5, 0.1), (20, 0.6), (2, 0.2)]
    assert pareto_front(pts) == [1, 2]  # (1, .2) then (5, .6); (10, .5) and (20, .6) are dominated


def test_bad_study_input_is_one_line(tmp_path):
    with pytest.raises(CmatError, match="must differ"):
        run_study(tiny_config(), tmp_path / "a", source_task=1, target_task=1)
    with pytest.raises(CmatError, match="tl-K"):
        run_study(tiny_config(), tmp_path / "b", strategies=["banana"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    res = CliRunner().invoke(main, ["transfer-study", "--tasks", "toy-2task", "--out", str(tmp_path / "c"),
                                    "--target-task", "5"])
    assert res.exit_code == 1 and "out of range" in res.output and "Traceback" not in res.output


@pytest.mark.slow  # a whole certified study (2 sources, 6 cells); .ci/run runs it
def test_certified_study_compares_a_certified_source_on_certified_targets(tmp_path):
    """``--objective crown-ibp``: sources standard and crown-ibp, every network the certified
    recipe's cnn-ibp, the robust column is ``certified`` (proven by the harness, never above
    worst), the reference is scratch crown-ibp, and the source effect pairs the same images."""
    cfg = quick_config(method="at-individual", objective="crown-ibp", train={"epochs": 1, "samples": 256},
                       eval={"attacks": ["clean", "pgd10", "certified"], "samples": 16})
    assert cfg.model.arch == "cnn-ibp" and cfg.train.optimizer == "adam"
    out = tmp_path / "cert"
    study = run_study(cfg, out, strategies=["lwf"], jobs=1, verify_samples=1, verify_iters=1,
                      progress=False, say=lambda _: None)
    assert study["robust_column"] == "certified" and study["reference"] == "none-scratch-crown-ibp"
    cells = {(r["source_objective"], r["strategy"], r["target_objective"]) for r in study["rows"]}
    objs = ("standard", "crown-ibp")
    assert cells == {(s, st, t) for s in objs for st in ("lwf",) for t in objs} | {
        ("none", "scratch", t) for t in objs}
    for r in study["rows"]:
        assert r["certified"] <= r["worst"] <= r["clean"]
    assert set(study["sources"]) == set(objs) and "certified" in study["sources"]["crown-ibp"]
    import yaml

    spec = yaml.safe_load((out / "sources" / "crown-ibp" / "config.yaml").read_text())
    assert spec["model"]["arch"] == "cnn-ibp" and spec["objective"]["name"] == "crown-ibp"
    assert len(study["source_effect"]) == 2
    for e in study["source_effect"]:
        a = json.loads((out / "cells" / f"crown-ibp-{e['strategy']}-{e['target_objective']}" / "cell.json").read_text())
        b = json.loads((out / "cells" / f"standard-{e['strategy']}-{e['target_objective']}" / "cell.json").read_text())
        ca, cb = (np.asarray(x["outcomes"]["certified"], bool) for x in (a, b))
        assert e["mcnemar"]["b_only"] == int((ca & ~cb).sum()) and e["mcnemar"]["a_only"] == int((cb & ~ca).sum())
        assert e["difference"] == pytest.approx(ca.mean() - cb.mean())
    md = (out / "study.md").read_text()
    assert "Does the crown-ibp source help?" in md and "scratch-crown-ibp" in md


def test_lwf_under_a_certified_objective_adds_the_feature_penalty_to_the_bound_loss(individual_run):
    """LwF with crown-ibp: the objective's bound-based loss + λ·mean|z − z₀|₁ on clean inputs
    (not the attack-based LwF loss, which would silently train without any bound)."""
    from cmat.objectives import make_objective
    from cmat.transfer import build_transfer_model, lwf_loss

    out, _ = individual_run
    source = cmat.load(out).model(0)
    task = get_tasks("toy-2task", seed=0)[1]
    model, _ = build_transfer_model(source, "finetune", task.num_classes)
    src, _ = build_transfer_model(source, "finetune", task.num_classes)
    with torch.no_grad():
        for p in model.features.parameters():
            p.add_(0.01)
    cfg = quick_config(method="at-individual", objective="crown-ibp")
    obj = make_objective(cfg.objective, cfg.threat)
    obj.warm = True  # the schedule at its end: full ε
    x, y = task.train.tensors(torch.arange(16))
    gen = torch.Generator().manual_seed(0)
    model.eval(), src.eval()
    loss, _ = lwf_loss(model, src, obj, 0.5)(model, x, y, gen)
    obj.warm = True
    plain, _ = obj.loss(model, x, y, gen)
    penalty = (model.embed(x) - src.embed(x)).abs().mean()
    assert penalty > 0 and torch.allclose(loss, plain + 0.5 * penalty)
    assert not torch.allclose(plain, torch.nn.functional.cross_entropy(model(x), y))  # the bound term is there


def test_sources_and_cells_are_jobs_of_the_one_scheduler(study, tmp_path):
    """A source that must train again is a run job (it resumes as a bench's run does); its cells
    are jobs after it, the other source's finished cells are reused; every job pickles into a
    worker process or a SLURM job with its function by reference."""
    import pickle
    import shutil

    from cmat.config import to_yaml
    from cmat.launch.jobs import run_config
    from cmat.transfer_study.study import plan_jobs

    out, result, _ = study
    copy = tmp_path / "s"
    shutil.copytree(out, copy)
    (copy / "sources" / "pgd" / "results.json").unlink()
    cfg = tiny_config()
    settings = {"source_task": 0, "target_task": 1, "bound": "crown", "verify_samples": 3, "verify_iters": 3,
                "eps_max_factor": 2.0}
    cells = plan(result["strategies"])
    jobs = plan_jobs(cfg, copy, to_yaml(cfg), 0, ("standard", "pgd"), cells, settings, lambda _: None)
    assert jobs[0].name == "source-pgd" and jobs[0].fn is run_config and jobs[0].prepare is not None
    assert {j.name for j in jobs[1:]} == {c.name for c in cells if c.source == "pgd"}
    assert all(j.deps == ("source-pgd",) and j.result == "cell.json" for j in jobs[1:])
    for j in jobs:
        back = pickle.loads(pickle.dumps(j))
        assert back.fn is j.fn and back.args == j.args and back.digest == j.digest
