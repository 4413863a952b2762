"""Shared fixtures: quick toy-2task runs trained once per test session.

Under pytest-xdist every worker is a separate process; a session fixture built with
:func:`once_per_session` is trained by the first worker that needs it and read back by the
others (a file lock in the session's common temporary folder), so no run is trained twice.
"""
import json

import pytest
import torch
from click.testing import CliRunner
from tests.helpers import once_per_session, run_quick


torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to oversubscription








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


