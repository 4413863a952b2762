"""The engine on toy-2task: results contract, determinism, forgetting, AT vs standard."""

import pytest

import cmat
from cmat.evaluate import build_attacks, evaluate_task
from tests.helpers import quick_config, run_quick

from cmat.tasks import get_tasks


def test_results_contract(finetune_run):
    out, res = finetune_run
    assert res["format"] == "cmat-results" and res["version"] == 1
    assert res["method"] == "at-finetune" and res["objective"] == "pgd" and res["tasks"] == "toy-2task"
    assert len(res["task_names"]) == 2
    for name in ("clean", "fgsm", "pgd10", "pgd40"):
        mat = res["acc"][name]
        assert [len(r) for r in mat] == [1, 2]
        assert all(0.0 <= a <= 1.0 for r in mat for a in r)
        assert len(res["f1"][name]) == 2
        assert set(res["summary"][name]) == {"acc", "bwt", "forgetting", "n", "correct", "ci95"}
        lo, hi = res["summary"][name]["ci95"]
        assert lo <= res["summary"][name]["correct"] / res["summary"][name]["n"] <= hi
    assert "worst" in res["acc"] and res["summary"]["worst"]["n"] == res["summary"]["clean"]["n"] == 400
    assert res["attacks"]["pgd10"]["steps"] == 10 and res["attacks"]["pgd40"]["steps"] == 40
    assert res["attacks"]["pgd10"]["eps"] == pytest.approx(8 / 255)
    assert res["attacks"]["pgd10"]["alpha"] == pytest.approx(2 / 255)
    assert set(res["cost"]) >= {"train_seconds", "params_total", "store_bytes"}
    assert res["cost"]["store_bytes"] == (out / "store.h5").stat().st_size
    for f in ("store.h5", "config.yaml", "log.jsonl"):
        assert (out / f).exists()
    assert any((out / "tb").iterdir())


def test_attack_strength_ordering_in_results(individual_run):
    _, res = individual_run
    last = {n: res["acc"][n][-1] for n in res["acc"]}
    for j in range(2):
        assert last["pgd40"][j] <= last["pgd10"][j] <= last["clean"][j]


def test_finetune_forgets_individual_does_not(finetune_run, individual_run):
    _, ft = finetune_run
    _, ind = individual_run
    # toy-2task's shared template survives fine-tuning on clean data; its robustness does not
    assert ft["acc"]["worst"][1][0] < ft["acc"]["worst"][0][0] - 0.1
    assert ft["summary"]["worst"]["forgetting"] > 0.1
    for name in ind["acc"]:
        assert ind["acc"][name][1][0] == ind["acc"][name][0][0]  # bit for bit
        assert ind["summary"][name]["forgetting"] == 0.0


def test_adversarial_training_beats_standard_under_pgd(individual_run, standard_run):
    _, at = individual_run
    _, std = standard_run
    assert std["summary"]["clean"]["acc"] > 0.9
    assert at["summary"]["pgd10"]["acc"] > std["summary"]["pgd10"]["acc"] + 0.2


def test_same_seed_same_results(tmp_path):
    """Two runs with one seed: the same accuracies and bit-identical weights, masks and BN
    statistics in store.h5 (every dataset's SHA-256, scripts/golden_digest.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import golden_digest

    kw = dict(method="at-finetune", epochs=1, eval={"attacks": ["clean", "pgd10"], "samples": 50})
    first, again = run_quick(tmp_path / "a", **kw), run_quick(tmp_path / "b", **kw)
    assert again["acc"] == first["acc"]
    assert golden_digest.datasets(tmp_path / "a" / "store.h5") == golden_digest.datasets(tmp_path / "b" / "store.h5")


def test_store_round_trip_reproduces_results(individual_run):
    out, res = individual_run
    loaded = cmat.load(out)
    assert loaded.task_names == res["task_names"]
    cfg = loaded.config
    seq = get_tasks("toy-2task", seed=cfg.seed)
    for j in range(2):
        model = loaded.model(j)
        assert not model.training
        atks = build_attacks(["clean", "pgd10"], cfg.threat.eps, cfg.threat.alpha, seq[j].num_classes)
        got = evaluate_task(model, seq[j].test, atks, seq[j].num_classes, cfg.seed, j, cfg.eval.samples)
        assert got["clean"]["acc"] == res["acc"]["clean"][-1][j]
        assert got["pgd10"]["acc"] == res["acc"]["pgd10"][-1][j]


@pytest.mark.parametrize("objective", ["trades", "fast", "free"])
def test_other_objectives_train(tmp_path, objective):
    res = run_quick(tmp_path, method="at-individual", objective=objective, epochs=2,
                    eval={"attacks": ["clean", "pgd10"]})
    chance = 1.0 / 2
    assert res["summary"]["clean"]["acc"] > chance + 0.2
    assert res["objective"] == objective


@pytest.mark.parametrize("objective,passes", [("pgd", 5 + 1), ("standard", 1)])
def test_grad_evals_count_every_forward_backward_pass(tmp_path, objective, passes):
    # toy-2task: 1080 training images per task, 1 epoch, PGD-5 (toy preset) + the training step
    res = run_quick(tmp_path, method="at-individual", objective=objective, epochs=1,
                    eval={"attacks": ["clean"], "samples": 20})
    assert res["cost"]["grad_evals"] == 2 * 1080 * passes


def test_per_task_cost_adds_up(tmp_path):
    res = run_quick(tmp_path, method="at-individual", objective="standard", epochs=1,
                    eval={"attacks": ["clean"], "samples": 20})
    per_task = res["cost"]["per_task"]
    assert len(per_task) == 2
    assert sum(c["grad_evals"] for c in per_task) == res["cost"]["grad_evals"] == 2 * 1080
    batch = quick_config().train.batch_size
    assert [c["steps"] for c in per_task] == [-(-1080 // batch)] * 2
    keys = ("step_seconds", "step_cpu_seconds", "val_seconds", "eval_seconds", "eval_cpu_seconds")
    assert all(c[k] > 0 for c in per_task for k in keys)
    assert per_task[0]["peak_rss_mb"] <= per_task[1]["peak_rss_mb"]  # a high-water mark
    assert per_task[-1]["store_bytes"] == res["cost"]["store_bytes"] and per_task[0]["store_bytes"] > 0
