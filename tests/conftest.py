"""Shared fixtures: quick toy-2task runs trained once per test session.

Under pytest-xdist every worker is a separate process; a session fixture built with
:func:`once_per_session` is trained by the first worker that needs it and read back by the
others (a file lock in the session's common temporary folder), so no run is trained twice.
"""
import fcntl
import json

import pytest
import torch
from click.testing import CliRunner

from cmat.config import resolve
from cmat.engine import Run

torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to oversubscription


def quick_config(method="at-finetune", objective="pgd", epochs=None, **over):
    overrides = {"method": method, "objective": {"name": objective},
                 "eval": {"attacks": ["clean", "fgsm", "pgd10", "pgd40"], "samples": 200}}
    if epochs is not None:
        overrides["train"] = {"epochs": epochs}
    for key, value in over.items():
        overrides.setdefault(key, {}).update(value) if isinstance(value, dict) else overrides.__setitem__(key, value)
    return resolve("toy-2task", overrides=overrides)


def run_quick(out, **kw):
    Run(quick_config(**kw), out, progress=False, verbose=False).execute()
    return json.loads((out / "results.json").read_text())


def once_per_session(tmp_path_factory, worker_id: str, name: str, make):
    """``(out, make(out))`` for a folder ``out`` named ``name``, computed once per test session:
    by this process without xdist; with xdist by the first worker to ask, under a file lock in
    the folder all workers of this session share, the result kept as JSON for the others."""
    if worker_id == "master":
        out = tmp_path_factory.mktemp(name)
        return out, make(out)
    root = tmp_path_factory.getbasetemp().parent  # common to the workers of this session only
    out, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            out.mkdir()
            done.write_text(json.dumps(make(out)))
    return out, json.loads(done.read_text())


@pytest.fixture(scope="session")
def finetune_run(tmp_path_factory, worker_id):
    return once_per_session(tmp_path_factory, worker_id, "ft", lambda out: run_quick(out, method="at-finetune"))


@pytest.fixture(scope="session")
def individual_run(tmp_path_factory, worker_id):
    return once_per_session(tmp_path_factory, worker_id, "ind",
                            lambda out: run_quick(out, method="at-individual"))


@pytest.fixture(scope="session")
def standard_run(tmp_path_factory, worker_id):
    return once_per_session(tmp_path_factory, worker_id, "std",
                            lambda out: run_quick(out, method="at-individual", objective="standard"))


DEFAULT_RUN_ARGS = ["run", "--tasks", "toy-2task", "--seed", "0", "--attacks", "clean,fgsm,pgd10,pgd40",
                    "--no-progress"]


@pytest.fixture(scope="session")
def default_toy_run(tmp_path_factory, worker_id):
    """``cmat run --tasks toy-2task --seed 0`` as a user runs it (CMAT, the preset, goals from an
    individual model), without AutoAttack: the golden run of tests/test_goldens.py."""
    from cmat.cli import main

    def make(out):
        res = CliRunner().invoke(main, DEFAULT_RUN_ARGS + ["--out", str(out / "run")])
        assert res.exit_code == 0, res.output
        return json.loads((out / "run" / "results.json").read_text())

    out, res = once_per_session(tmp_path_factory, worker_id, "default", make)
    return out / "run", res


# Which xdist worker trains which shared run first, before its own tests: the runs are ready when
# other workers' tests ask for them, instead of one worker waiting on the other's lock.
WARM_UP = {"gw0": ("finetune_run", "default_toy_run"), "gw1": ("individual_run", "standard_run")}


@pytest.fixture(scope="session", autouse=True)
def _warm_shared_runs(request, worker_id):
    for name in WARM_UP.get(worker_id, ()):
        request.getfixturevalue(name)


def interrupt_before_second_task(monkeypatch, method_cls, cfg, out) -> None:
    """Run ``cfg`` into ``out`` and stop it with Ctrl-C as task 2 starts (the checkpoint of task 1
    stays, the run refuses with one line naming --resume); ``method_cls`` is restored after."""
    from cmat.errors import CmatError

    original = method_cls.before_task

    def interrupt(self, t, task):
        if t == 1:
            raise KeyboardInterrupt
        return original(self, t, task)

    monkeypatch.setattr(method_cls, "before_task", interrupt)
    with pytest.raises(CmatError, match="--resume"):
        Run(cfg, out, progress=False, verbose=False).execute()
    monkeypatch.setattr(method_cls, "before_task", original)
