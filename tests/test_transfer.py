"""Robustness transfer: frozen means frozen; the strategies run; the Shafahi comparison."""
import json

import pytest
import torch
from click.testing import CliRunner

import cmat
from cmat.cli import main
from cmat.engine import Trainer
from cmat.errors import CmatError
from cmat.tblog import RunLogger
from cmat.transfer import build_transfer_model, param_groups
from cmat.tasks import get_tasks
from tests.helpers import quick_config


@pytest.mark.parametrize("strategy", ["linear", "tl-1"])
def test_frozen_parameters_and_bn_buffers_unchanged_by_training(individual_run, strategy):
    out, _ = individual_run
    source = cmat.load(out).model(0)
    seq = get_tasks("toy-2task", seed=0)
    model, kind = build_transfer_model(source, strategy, seq[1].num_classes)
    frozen = {n: v.clone() for n, v in list(model.named_parameters()) + list(model.named_buffers())
              if not n.startswith("head")}
    cfg = quick_config(method="at-individual", epochs=1)
    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(None), progress=False)
    trainer.fit(model, None, seq[1], 1, snapshot=model, param_groups=param_groups(model, kind, 0.01, 0.1))
    changed = {n for n, v in list(model.named_parameters()) + list(model.named_buffers())
               if n in frozen and not torch.equal(v, frozen[n])}
    if strategy == "linear":
        assert changed == set()
        assert all(not p.requires_grad for p in model.features.parameters())
    else:
        last = [n for n in frozen if n.startswith("features.")]
        trained = {n for n in changed}
        assert trained and all(n.startswith("features.") for n in trained)
        # everything before the re-initialised last layer is untouched
        first_trained = min(int(n.split(".")[1]) for n in trained)
        assert all(int(n.split(".")[1]) >= first_trained for n in trained)
        assert any(int(n.split(".")[1]) < first_trained for n in last)
    model.train()  # what the training loop does every epoch: frozen BN layers stay in eval mode
    assert model.training and model.frozen_bn
    assert all(not bn.training for bn in model.frozen_bn)


def test_bad_strategy_is_one_line(individual_run):
    source = cmat.load(individual_run[0]).model(0)
    with pytest.raises(CmatError, match="tl-K"):
        build_transfer_model(source, "banana", 3)
    with pytest.raises(CmatError):
        build_transfer_model(source, "tl-99", 3)


def test_transfer_command_and_linear_probe_keeps_robustness(individual_run, tmp_path):
    out, _ = individual_run
    res = CliRunner().invoke(main, ["transfer", "--source", str(out), "--source-task", "0", "--tasks", "toy-2task",
                                    "--task", "1", "--strategies", "linear,finetune,lwf,scratch",
                                    "--objectives", "standard", "--epochs", "4",
                                    "--out", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "transfer.json").read_text())
    rows = {(r["strategy"], r["objective"]): r for r in report["rows"]}
    assert set(rows) == {("linear", "standard"), ("finetune", "standard"), ("lwf", "standard"),
                         ("scratch", "standard")}
    for r in rows.values():
        assert r["worst"] <= r["pgd40"] <= r["pgd10"] <= r["clean"]
        assert r["grad_evals"] == 4 * 1080  # 4 epochs of toy-b's 1080 training images, one pass each
    assert rows[("linear", "standard")]["trainable_params"] < rows[("finetune", "standard")]["trainable_params"]
    assert (tmp_path / "transfer.png").exists() and (tmp_path / "transfer.md").exists()
