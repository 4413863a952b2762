"""CMAT on toy-2task: growth keeps earlier tasks bit-identical; an interrupted run resumes to
exactly the uninterrupted results; a resume with another configuration is refused."""

import pytest
import torch
import yaml

from cmat.baselines.packnet import PackNet
from cmat.config import from_dict, resolve
from cmat.cpg import CMAT
from cmat.engine import Run
from cmat.errors import CmatError
from tests.conftest import DEFAULT_RUN_ARGS, quick_config, run_quick
from tests.test_cpg import CMAT_OPTS, _trained_first_task


def test_unreachable_goal_grows_and_old_task_stays_identical(tmp_path):
    res = run_quick(tmp_path, method="cmat", epochs=2,
                    method_options={**CMAT_OPTS, "goal": 1.5, "prune_levels": 1})
    rec = res["decisions"]["tasks"]
    assert rec[0]["width"] == 1.5 and rec[1]["width"] == 1.5
    # the goal is never met: compaction keeps what growth reached (within the 0.02 tolerance)
    assert rec[0]["compact_goal"] == rec[0]["val_after_grow"] < 1.5
    assert rec[0]["val_final"] >= rec[0]["compact_goal"] - 0.02
    for mat in res["acc"].values():
        assert mat[1][0] == mat[0][0]


def test_growth_on_second_task_keeps_first_bit_identical():
    method, trainer, seq = _trained_first_task(CMAT, {**CMAT_OPTS, "goal": 0.0}, epochs=1)
    net = method.net.eval()
    x = seq[0].test.tensors()[0][:32]
    ref = net(x, 0)
    method.opts["goal"] = 1.5
    method.before_task(1, seq[1])
    method.train_task(1, seq[1], trainer)
    assert method.width == 1.5
    net.eval()
    assert torch.equal(net(x, 0), ref)


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch, default_toy_run):
    """The default run (conftest; goals from individual models, compaction), interrupted after
    task 1 and resumed, ends with exactly the uninterrupted run's results and decisions."""
    _, full = default_toy_run
    original = CMAT.before_task

    def interrupt(self, t, task):
        if t == 1:
            raise KeyboardInterrupt
        return original(self, t, task)

    monkeypatch.setattr(CMAT, "before_task", interrupt)
    cfg = resolve("toy-2task", overrides={"seed": 0, "eval": {"attacks": DEFAULT_RUN_ARGS[6].split(",")}})
    assert cfg.to_dict() == from_dict(yaml.safe_load((default_toy_run[0] / "config.yaml").read_text())).to_dict()
    with pytest.raises(CmatError, match="--resume"):
        Run(cfg, tmp_path / "cut", progress=False, verbose=False).execute()
    assert (tmp_path / "cut" / "checkpoint.h5").exists()
    assert not (tmp_path / "cut" / "results.json").exists()
    monkeypatch.setattr(CMAT, "before_task", original)
    resumed = Run(cfg, tmp_path / "cut", progress=False, verbose=False, resume=True).execute()
    assert resumed["acc"] == full["acc"]
    assert resumed["decisions"] == full["decisions"]
    assert not (tmp_path / "cut" / "checkpoint.h5").exists()


def test_mismatched_resume_refused(tmp_path, monkeypatch):
    opts = dict(method="packnet", epochs=1, method_options={"retrain_epochs": 1})
    original = PackNet.before_task

    def interrupt(self, t, task):
        if t == 1:
            raise KeyboardInterrupt
        return original(self, t, task)

    monkeypatch.setattr(PackNet, "before_task", interrupt)
    with pytest.raises(CmatError):
        Run(quick_config(**opts), tmp_path, progress=False, verbose=False).execute()
    monkeypatch.setattr(PackNet, "before_task", original)
    other = quick_config(method="packnet", epochs=2, method_options={"retrain_epochs": 1})
    with pytest.raises(CmatError, match="train.epochs") as err:
        Run(other, tmp_path, progress=False, verbose=False, resume=True).execute()
    assert "\n" not in str(err.value)
