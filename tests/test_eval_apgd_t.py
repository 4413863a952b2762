"""``cmat eval --attacks apgd-t`` / ``aa`` on a trained run: the attacks are sized to each task's
head, and the JSON's ``attacks`` entry says what ran on each task (targets, components), not
what a 10-class head would have run."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cmat.cli
from cmat.attacks import AutoAttack
from cmat.errors import CmatError
from cmat.evaluate import attacks_as_run, task_attacks
from tests.helpers import run_quick

pytest.importorskip("torchattacks")

EPS, ALPHA = 8 / 255, 2 / 255


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("apgd-t")
    run_quick(out, method="at-individual", epochs=1, eval={"attacks": ["clean"], "samples": 20})
    return out


def eval_json(run_dir, attacks: str) -> dict:
    res = CliRunner().invoke(cmat.cli.main, ["eval", str(run_dir), "--attacks", attacks, "--samples", "20", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_eval_apgd_t_runs_per_head_and_reports_its_targets(run_dir):
    """Before the fix this exited 1 ("apgd-t needs n_classes"): the up-front check built the
    attacks without a head size. toy-2task has 4 classes per task: 3 targets each."""
    report = eval_json(run_dir, "clean,apgd-t")
    assert [r["name"] for r in report["tasks"]] and len(report["tasks"]) == 2
    for r in report["tasks"]:
        assert r["apgd-t"]["n"] == r["clean"]["n"] == 20
        assert r["apgd-t"]["acc"] <= r["clean"]["acc"]
        assert r["worst"]["acc"] <= r["apgd-t"]["acc"]
    meta = report["attacks"]["apgd-t"]
    assert meta["loss"] == "dlr-targeted" and meta["targets_per_task"] == [3, 3]
    assert "n_classes" not in meta


def test_eval_aa_lists_the_components_each_task_ran(run_dir, monkeypatch):
    """Before the fix the entry was AutoAttack's for a 10-class head (``n_classes`` 10) whatever
    the run's heads were; now it is the union of what ran and the list per task. The components
    are recorded as AutoAttack calls them and replaced by the identity (AutoAttack's strength is
    tested elsewhere; its Square alone takes a minute here), so the entry is checked against
    what actually ran."""
    ran = []

    def component(self, name, grad_model, seed):
        ran.append(name)
        return lambda x, y: x

    monkeypatch.setattr(AutoAttack, "_component", component)
    report = eval_json(run_dir, "clean,aa")
    meta = report["attacks"]["aa"]
    every = AutoAttack(EPS, n_classes=4).components  # toy-2task: 4 classes, all four run
    assert "n_classes" not in meta
    assert meta["components_per_task"] == [every, every] and meta["components"] == every
    assert ran == [c for r, comps in zip(report["tasks"], meta["components_per_task"]) if r["clean"]["acc"] > 0
                   for c in comps]
    assert ran  # something ran


def test_attacks_as_run_on_mixed_heads():
    """Heads of 2 and 4 classes: AutoAttack leaves APGD-T out on the 2-class head, and the entry
    says so per task; the union is what ran somewhere."""
    meta = attacks_as_run(task_attacks(["aa", "apgd-t"], EPS, ALPHA, [4, 5]))
    assert meta["apgd-t"]["targets_per_task"] == [3, 4]
    meta = attacks_as_run(task_attacks(["clean", "aa", "pgd10"], EPS, ALPHA, [2, 4]))
    assert meta["aa"]["components_per_task"] == [["apgd-ce", "fab-t", "square"],
                                                 ["apgd-ce", "apgd-t", "fab-t", "square"]]
    assert meta["aa"]["components"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert meta["pgd10"]["steps"] == 10 and meta["clean"]["steps"] == 0


def test_apgd_t_on_a_two_class_head_is_one_line_naming_the_task():
    """Targeted DLR needs 4 classes: a 2-class task is refused before anything is evaluated."""
    with pytest.raises(CmatError, match=r"task 1 \(b\), 2 classes: apgd-t needs a head of at least 4") as err:
        task_attacks(["clean", "apgd-t"], EPS, ALPHA, [4, 2], task_names=["a", "b"])
    assert "\n" not in str(err.value)


def test_unknown_attack_name_is_one_line(run_dir):
    res = CliRunner().invoke(cmat.cli.main, ["eval", str(run_dir), "--attacks", "clean,pgdx"])
    assert res.exit_code == 1 and "unknown attack 'pgdx'" in res.output and "Traceback" not in res.output
