"""The cost estimate printed before training: exact pass counts where the schedule is fixed,
bounds where a method may repeat phases, recorded beside the measured cost."""
import pytest

from cmat.attacks.factory import attack_passes
from cmat.estimate import describe


@pytest.mark.parametrize("fixture", ["individual_run", "finetune_run", "standard_run"])
def test_estimated_training_passes_equal_the_measured_ones(fixture, request):
    _, res = request.getfixturevalue(fixture)
    est = res["cost"]["estimate"]
    assert est["train_passes"] == est["train_passes_max"] == res["cost"]["grad_evals"]
    assert est["pass_seconds"] > 0 and est["total_seconds"] > 0
    assert [p["phase"] for p in est["tasks"][0]["phases"]] == ["train"]
    text = describe(est)
    assert "estimate on cpu" in text and "task 1: train" in text


def test_cmat_passes_lie_within_the_estimated_range(tmp_path):
    from tests.helpers import run_quick

    res = run_quick(tmp_path, method="cmat", epochs=1, method_options={"prune_levels": 2, "compact_epochs": 1},
                    eval={"attacks": ["clean"], "samples": 20})
    est = res["cost"]["estimate"]
    grows = sum(1 for line in open(tmp_path / "log.jsonl") if '"tag": "grow' in line and '"kind": "epoch"' in line)
    # expected: no growth and every compaction level; each growth epoch adds one epoch of passes
    per_epoch = est["train_passes"] // sum(p["epochs"] * p["times"] for t in est["tasks"] for p in t["phases"])
    assert res["cost"]["grad_evals"] <= est["train_passes_max"]
    assert res["cost"]["grad_evals"] <= est["train_passes"] + grows * per_epoch
    phases = [p["phase"] for p in est["tasks"][0]["phases"]]
    assert phases == ["individual", "train", "grow", "compact"]


def test_attack_pass_counts():
    assert attack_passes("pgd10", 10) == 11 and attack_passes("fgsm", 2) == 2
    assert attack_passes("aa", 2) < attack_passes("aa", 10)  # APGD-T needs C ≥ 4
    assert attack_passes("certified", 10) == 0


def test_estimate_only_prints_the_estimate_and_writes_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cmat.cli import main

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", "--tasks", "toy-2task", "--epochs", "2", "--estimate-only",
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "estimate on cpu" in res.output and "task 1: individual 2 ep, train 2 ep" in res.output
    assert list(tmp_path.iterdir()) == []
