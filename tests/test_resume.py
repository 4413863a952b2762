"""An interrupted run resumes to exactly the uninterrupted results; a resume with another
configuration is refused with one line."""

import sys
from pathlib import Path

import pytest

from cmat.baselines.packnet import PackNet
from cmat.cpg import CMAT
from cmat.engine import Run
from cmat.errors import CmatError
from tests.helpers import interrupt_before_second_task, quick_config, run_quick

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from golden_digest import datasets  # noqa: E402


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch):
    """CMAT with goals from individual models and compaction, interrupted after task 1 and
    resumed, ends with exactly the uninterrupted run's results, decisions and stored weights
    (the individual model of task 2 is trained after the resume: the restored random state
    must be exact)."""
    opts = dict(method="cmat", epochs=1, method_options={"max_sparsity": 0.6, "prune_levels": 2, "compact_epochs": 1},
                eval={"attacks": ["clean", "pgd10"], "samples": 50})
    full = run_quick(tmp_path / "full", **opts)
    cfg = quick_config(**opts)
    interrupt_before_second_task(monkeypatch, CMAT, cfg, tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoint.h5").exists()
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = Run(cfg, tmp_path / "cut", progress=False, verbose=False, resume=True).execute()
    assert resumed["acc"] == full["acc"]
    assert resumed["decisions"] == full["decisions"]
    assert [d["goal"] for d in full["decisions"]["tasks"]] != [None, None]  # goals came from individual models
    assert datasets(tmp_path / "cut" / "store.h5") == datasets(tmp_path / "full" / "store.h5")
    assert not (tmp_path / "cut" / "checkpoint.h5").exists()


def test_mismatched_resume_refused(tmp_path, monkeypatch):
    opts = dict(method="packnet", epochs=1, method_options={"retrain_epochs": 1})
    interrupt_before_second_task(monkeypatch, PackNet, quick_config(**opts), tmp_path)
    other = quick_config(method="packnet", epochs=2, method_options={"retrain_epochs": 1})
    with pytest.raises(CmatError, match="train.epochs") as err:
        Run(other, tmp_path, progress=False, verbose=False, resume=True).execute()
    assert "\n" not in str(err.value)
