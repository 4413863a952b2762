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
from tests.conftest import quick_config

TINY = {"train": {"epochs": 1, "val_attack_samples": 16},
        "eval": {"attacks": ["clean", "pgd10", "pgd40"], "samples": 24}}


def tiny_config():
    return quick_config(method="at-individual", **TINY)


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
    ratios = result["ratios_vs_scratch_pgd"]
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
