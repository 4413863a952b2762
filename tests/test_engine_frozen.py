"""Methods that declare a learned task frozen: the engine reuses its evaluation, but a false
declaration can never leave stale numbers (probe logits after each task, the full fingerprint
at the end)."""
import json

from tests.helpers import quick_config, run_quick


def _lying_method(monkeypatch):
    """at-finetune (one shared network: task 1's training changes task 0's model) declaring,
    falsely, that a learned task is frozen."""
    from cmat.baselines.at_baselines import ATFinetune
    from cmat import methods

    class Lying(ATFinetune):
        name = "lying-frozen"

        def evaluations_of(self, j, n_tasks):
            return 1

    monkeypatch.setitem(methods.METHODS, "lying-frozen", Lying)


def test_a_false_frozen_declaration_cannot_leave_stale_results(tmp_path, monkeypatch, finetune_run):
    """The probe-logit check sees that task 0 changed and re-evaluates it: the matrix is
    bit-identical to the honest at-finetune run's."""
    _lying_method(monkeypatch)
    res = run_quick(tmp_path, method="lying-frozen")
    assert res["acc"] == finetune_run[1]["acc"]


def test_the_end_of_run_check_catches_what_the_probe_missed(tmp_path, monkeypatch, finetune_run, capsys):
    """With the probe blinded, the final row is still re-measured from the full fingerprint."""
    from cmat.engine import Run
    from cmat.evaluate import FrozenCheck

    _lying_method(monkeypatch)
    monkeypatch.setattr(FrozenCheck, "unchanged", lambda self, model, task_time=0: True)
    Run(quick_config(method="lying-frozen"), tmp_path, progress=False, verbose=True).execute()
    res = json.loads((tmp_path / "results.json").read_text())
    honest = finetune_run[1]
    for name in res["acc"]:
        assert res["acc"][name][-1] == honest["acc"][name][-1]  # the final row: measured
        assert res["acc"][name][0] == honest["acc"][name][0]
    assert res["summary"]["worst"] == honest["summary"]["worst"]
    assert "task 1's model changed after its evaluation" in capsys.readouterr().out
