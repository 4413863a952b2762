"""Helpers shared by the tests (fixtures live in conftest.py): toy configurations and runs,
the CLI invoked as a user does, small models and their margins."""

import csv
import fcntl
import io
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cmat.cli import main
from cmat.config import resolve
from cmat.engine import Run, Trainer
from cmat.nn import MultiHeadNet
from cmat.nn.masked import MaskedMultiHeadNet
from cmat.tasks import get_tasks
from cmat.tblog import RunLogger

TINY = {"train": {"epochs": 1, "val_attack_samples": 16},
        "eval": {"attacks": ["clean", "pgd10", "pgd40"], "samples": 24}}
TIME_COLUMNS = ("train_seconds",)
# a two-method toy bench (the launcher tests: local workers, SLURM)
TOY_BENCH = ["bench", "--tasks", "toy-2task", "--methods", "at-finetune,packnet", "--seeds", "0", "--epochs", "1",
         "--train-samples", "192", "--eval-samples", "16", "--attacks", "clean,pgd10",
         "--set", "train.val_attack_samples=16", "--set", "method_options.retrain_epochs=1", "--no-progress"]

CMAT_OPTS = {"goal": "none", "max_sparsity": 0.6, "prune_levels": 2, "compact_epochs": 1}


def trained_first_task(method_cls, opts, epochs=None, train=True):
    cfg = quick_config(method=method_cls.name, method_options=opts, epochs=epochs)
    seq = get_tasks("toy-2task", seed=cfg.seed)
    torch.manual_seed(0)
    method = method_cls(cfg, seq, "cpu")
    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(None), progress=False)
    method.before_task(0, seq[0])
    if train:
        method.train_task(0, seq[0], trainer)
    return method, trainer, seq


def tiny_config():
    return quick_config(method="at-individual", **TINY)


def table(path: Path) -> list:
    """bench.csv without its time columns."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]


def small_model(kind="plain", seed=0):
    torch.manual_seed(seed)
    if kind == "masked":
        net = MaskedMultiHeadNet("smallcnn", 1, 8, width=0.25)
        net.add_task(0, 3, [0.3], [0.3], 1.0)
        net.prune_owned(0, 0.3)
        net.add_task(1, 4, [0.3], [0.3], 1.0)
        view = net.task_view(1)
    else:
        net = MultiHeadNet("smallcnn", 1, 8, [4], [[0.3]], [[0.3]], width=0.25,
                           norm_layer="beta-bernoulli" if kind == "anp" else "batchnorm")
        view = net.task_view(0)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial BN statistics
            view(torch.rand(32, 1, 8, 8))
    return view.eval()


def margins(model, x, y):
    out = model(x)
    return (out.gather(1, y[:, None]) - out).scatter(1, y[:, None], float("inf")).min(1).values


def pgd_margin(model, x, y, lo, hi, step, steps):
    """The margin at a PGD point (CE ascent) inside the box [lo, hi]."""
    xa = x.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        (gr,) = torch.autograd.grad(nn.functional.cross_entropy(model(xa), y), xa)
        xa = torch.min(torch.max(xa.detach() + step * gr.sign(), lo), hi)
    with torch.no_grad():
        return margins(model, xa, y)


def mlp(widths=(4, 8, 8, 3), seed=0, logit_scale=1.0):
    """A seeded ReLU MLP; ``logit_scale`` multiplies the last layer (same decisions, smaller logits)."""
    torch.manual_seed(seed)
    layers = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers).eval()
    if logit_scale != 1.0:
        with torch.no_grad():
            net[-1].weight.mul_(logit_scale)
            net[-1].bias.mul_(logit_scale)
    return net


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def one_line_error(result):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("cmat: error:")
    return lines[0]


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
