"""Data-parallel training (cmat.distributed): two gloo processes on the CPU.

- with a deterministic objective and a network without batch norm, 2-rank DDP ends with the
  weights of the single-process run of the same global batch (floating-point tolerance), also
  when batches split unevenly (the loss-scale rule);
- with batch norm and PGD training the ranks stay bit-identical (gradients averaged, buffers
  synchronised before validation), and their shards see different attack noise;
- ``torchrun -m cmat run`` trains CMAT, rank 0 alone writes the run, zero forgetting holds;
- unsupported combinations are refused with one line.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cmat import config as config_mod
from cmat.catalog import check_ddp
from cmat.distributed import Dist, from_env
from cmat.engine import Trainer
from cmat.errors import CmatError
from cmat.nn import Normalize, TaskView
from cmat.tblog import RunLogger
from cmat.tasks import get_tasks

BATCH = 43  # odd: every global batch splits 22/21, the last one (1080 = 25·43 + 5) 3/2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoBNNet(nn.Module):
    """A small CNN without batch norm (so a shard's forward equals its rows of the global one)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(Normalize([0.5] * 3, [0.25] * 3), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * 16, 4))

    def forward(self, x, task=0):
        return self.body(x)


def _cfg(objective: str):
    return config_mod.resolve("toy-2task", overrides={
        "objective": {"name": objective, "steps": 4}, "train": {"epochs": 1, "batch_size": BATCH, "select": "last",
                                                               "lr": 0.05, "val_attack_samples": 32}})


def _train(objective: str, dist, bn: bool):
    cfg = _cfg(objective)
    task = get_tasks("toy-2task", seed=0)[0]
    if bn:
        from cmat.nn import MultiHeadNet

        torch.manual_seed(0)
        net = MultiHeadNet("smallcnn", 3, 16, [4], [task.mean], [task.std], width=0.25)
    else:
        net = NoBNNet()
    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(None), progress=False, dist=dist)
    trainer.fit(TaskView(net, 0), list(net.parameters()), task, 0, snapshot=net)
    return net


def _worker(rank, world, port, objective, bn, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = from_env(torch.device("cpu"))
    try:
        net = _train(objective, dist, bn)
        noise = [dist.attack_generator(0, "train", 0, 0).initial_seed()]
        torch.save({"state": net.state_dict(), "noise_seed": noise}, f"{out}/rank{rank}.pt")
    finally:
        dist.close()


def _spawn(tmp_path, objective, bn):
    mp.spawn(_worker, args=(2, free_port(), objective, bn, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_ddp_matches_single_process_of_the_same_global_batch(tmp_path):
    ranks = _spawn(tmp_path, "standard", bn=False)
    single = _train("standard", None, bn=False).state_dict()
    for name, ref in single.items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        assert torch.allclose(ranks[0]["state"][name], ref, rtol=1e-4, atol=1e-5), name
    # the run moved the weights (the comparison is not between two untouched copies)
    assert not torch.allclose(single["body.1.weight"], NoBNNet().state_dict()["body.1.weight"])


def test_ddp_ranks_stay_identical_with_batch_norm_and_pgd(tmp_path):
    ranks = _spawn(tmp_path, "pgd", bn=True)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert any("running_mean" in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert ranks[0]["noise_seed"] != ranks[1]["noise_seed"]  # independent random starts per shard


def test_shard_covers_the_batch_and_scales_the_loss():
    x, y = torch.arange(5.0).view(5, 1), torch.arange(5)
    parts = [Dist(rank=r, world=2, local_rank=r).shard(x, y) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    # Σ_r scale_r · mean_r / world = global mean
    means = [p[0].mean() for p in parts]
    assert sum(p[2] * m for p, m in zip(parts, means)) / 2 == pytest.approx(float(x.mean()))


def test_unsupported_combinations_are_refused():
    """What DDP accepts is what the classes declare (``supports_ddp``), and the refusal lists it."""
    with pytest.raises(CmatError, match="anp-vs") as err:
        check_ddp("anp-vs", "pgd")
    assert "at-finetune, at-individual, cmat, packnet;" in str(err.value)
    with pytest.raises(CmatError, match="trades") as err:
        check_ddp("cmat", "trades")
    assert "standard, pgd, fast, free;" in str(err.value)
    check_ddp("cmat", "pgd")


def test_torchrun_cmat_run_rank0_writes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cmat",
           "run", "--tasks", "toy-2task", "--method", "cmat", "--out", str(out), "--epochs", "1", "--no-progress",
           "--eval-samples", "64", "--attacks", "clean,pgd10",
           "--set", "method_options.goal=none", "--set", "method_options.prune_levels=2",
           "--set", "method_options.compact_epochs=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1  # one summary, from rank 0
    res = json.loads((out / "results.json").read_text())
    for name in ("clean", "pgd10"):
        assert res["acc"][name][1][0] == res["acc"][name][0][0]  # zero forgetting, exactly
    assert res["acc"]["clean"][1][1] > 0.5
    assert not (out / "checkpoint.h5").exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "eval.h5", "log.jsonl", "results.json",
                                                     "store.h5", "tb"]
