"""CMAT goal provenance: a CMAT run records the at-individual run its goals came from (directory
and SHA-256 of its results.json); the bench reuses it, and a checkpoint resumes, only while that
at-individual run is the one it read."""
import copy
import hashlib
import json

import pytest

from cmat.bench import bench_jobs
from cmat.config import resolve
from cmat.cpg import CMAT, goals_current
from cmat.engine import Run
from cmat.errors import CmatError
from tests.helpers import interrupt_before_second_task

OPTIONS = {"max_width": 1.0, "prune_levels": 1, "compact_epochs": 1}


def _base():
    return resolve("toy-2task", overrides={"train": {"epochs": 1}, "method_options": dict(OPTIONS),
                                           "eval": {"attacks": ["clean", "pgd10"], "samples": 40}})


def _cfg(method, individual_run=None):
    cfg = copy.deepcopy(_base())
    cfg.method, cfg.seed = method, 0
    if individual_run is not None:
        cfg.method_options = {**cfg.method_options, "individual_run": str(individual_run)}
    return cfg


def _train(cfg, out):
    Run(cfg, out, progress=False, verbose=False).execute()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _names(jobs):
    return sorted(j.name for j in jobs)


def test_bench_reuses_cmat_only_while_its_at_individual_run_is_the_one_it_read(tmp_path):
    out = tmp_path / "b"
    ind, cm = out / "at-individual-s0", out / "cmat-s0"
    _train(_cfg("at-individual"), ind)
    _train(_cfg("cmat", ind), cm)
    source = json.loads((cm / "results.json").read_text())["decisions"]["goal_source"]
    assert source == {"run": str(ind), "results_sha256": _sha(ind / "results.json")}
    jobs, reused = bench_jobs(_base(), ["cmat", "at-individual"], [0], out)
    assert jobs == [] and sorted(n for n, _ in reused) == ["at-individual-s0", "cmat-s0"]

    # at-individual rerun (same configuration, a new results.json): CMAT's goals are stale
    (ind / "results.json").unlink()
    _train(_cfg("at-individual"), ind)
    assert not goals_current(cm, ind)
    jobs, reused = bench_jobs(_base(), ["cmat", "at-individual"], [0], out)
    assert _names(jobs) == ["cmat-s0"] and [n for n, _ in reused] == ["at-individual-s0"]
    assert jobs[0].deps == ("at-individual-s0",)

    # at-individual about to rerun in this bench (no results.json): CMAT reruns after it
    (ind / "results.json").unlink()
    jobs, reused = bench_jobs(_base(), ["cmat", "at-individual"], [0], out)
    assert _names(jobs) == ["at-individual-s0", "cmat-s0"] and reused == []


def test_resuming_cmat_refuses_a_checkpoint_whose_goals_came_from_another_at_individual_run(tmp_path, monkeypatch):
    ind, cm = tmp_path / "ind", tmp_path / "cmat"
    _train(_cfg("at-individual"), ind)
    cfg = _cfg("cmat", ind)
    interrupt_before_second_task(monkeypatch, CMAT, cfg, cm)
    before = (ind / "results.json").read_bytes()
    (ind / "results.json").unlink()
    _train(_cfg("at-individual"), ind)  # a rerun: same configuration, a new results.json
    assert (ind / "results.json").read_bytes() != before
    with pytest.raises(CmatError, match="goals came from"):
        Run(cfg, cm, progress=False, verbose=False, resume=True).execute()
    (ind / "results.json").write_bytes(before)  # the run it read is back: resuming is allowed
    Run(cfg, cm, progress=False, verbose=False, resume=True).execute()
    assert goals_current(cm, ind)
