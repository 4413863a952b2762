"""Shared fixtures: quick toy-2task runs trained once per session."""
import json

import pytest
import torch

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


@pytest.fixture(scope="session")
def finetune_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    return out, run_quick(out, method="at-finetune")


@pytest.fixture(scope="session")
def individual_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ind")
    return out, run_quick(out, method="at-individual", eval={"samples": None})


@pytest.fixture(scope="session")
def standard_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("std")
    return out, run_quick(out, method="at-individual", objective="standard")
