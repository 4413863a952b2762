"""Data-parallel training through ``torchrun`` (DistributedDataParallel).

``torchrun --standalone --nproc_per_node N -m cmat run ...`` starts N copies of the run; each
finds ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment and :func:`from_env` joins the
process group (NCCL on GPUs, gloo on CPU). The contract:

- **Same decisions everywhere.** Every rank builds the same data, seeds the same generators and
  draws the same permutation and augmentation of every *global* batch of ``train.batch_size``
  images; rank r trains on the r-th contiguous shard (:meth:`Dist.shard`). The per-epoch
  generator plays the role of ``DistributedSampler.set_epoch`` (a new permutation every epoch,
  the same on every rank), and unlike a per-rank sampler it keeps the global batch -- and so
  the result -- equal to the single-process run's.
- **Attacks on the unwrapped module.** The objective's attack runs on the plain module of the
  rank (input gradients only, no gradient synchronisation); then one forward/backward of the
  :class:`~torch.nn.parallel.DistributedDataParallel` wrapper on the adversarial shard
  averages the parameter gradients. The loss of a shard of n_r of N images is scaled by
  ``world · n_r / N``, so the averaged gradient is the gradient of the global batch mean even
  when the last batch does not split evenly. Attack random starts come from a per-rank
  generator (:meth:`Dist.attack_generator`, derived from the run seed, phase, task, epoch and
  rank), so shards get independent noise while the data stream stays identical across ranks;
  with a deterministic objective (``standard``) a DDP run therefore matches the single-process
  run of the same global batch up to floating-point rounding -- for networks without batch
  norm, whose training statistics are per shard.
- **Batch norm** uses per-rank batch statistics (DDP's default); buffers are broadcast from
  rank 0 before every validation (:meth:`Dist.sync_buffers`), so validation -- and with it model
  selection and CMAT's grow/compact decisions -- is bit-identical on every rank.
- **Rank 0 alone writes** the run directory (store, results, checkpoints, TensorBoard) and
  prints; the other ranks train and evaluate silently.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here is used and a run is exactly the
single-process run.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cmat.seeding import generator

@dataclass
class Dist:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """Rank r's contiguous part of a global batch and its loss scale ``world · n_r / N``."""
        n = len(y)
        xs, ys = torch.tensor_split(x, self.world)[self.rank], torch.tensor_split(y, self.world)[self.rank]
        return xs, ys, self.world * len(ys) / max(n, 1)

    def wrap(self, model: nn.Module, device: torch.device) -> DistributedDataParallel:
        """The DDP wrapper of ``model`` for one training phase. ``static_graph``: the parameters
        a phase never uses (other tasks' heads, BN, masks) are found in its first iteration,
        without find_unused_parameters' graph traversal on every iteration."""
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        # integer buffers (owner tensors of masked layers, BN batch counters) are equal on every
        # rank by construction, and gloo cannot broadcast int16: DDP leaves them alone
        ignore = [name for name, b in model.named_buffers() if not b.is_floating_point()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        return DistributedDataParallel(model, device_ids=ids, static_graph=True)

    def attack_generator(self, *parts) -> torch.Generator:
        """This rank's generator for attack noise, derived from ``parts`` (run seed, phase, task,
        epoch) and the rank; the data stream's generator is left untouched."""
        return generator(*parts, "attack-rank", self.rank)

    def sync_buffers(self, module: nn.Module) -> None:
        """Broadcast every floating buffer (BN running statistics) from rank 0."""
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.broadcast(buf.data, src=0)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def world_size() -> int:
    """The number of processes of the torchrun job this process belongs to (1 outside)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or any process outside torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def from_env(device: torch.device) -> Optional[Dist]:
    """Join the torchrun job described by the environment, or ``None`` outside torchrun."""
    world = world_size()
    if world <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        # evaluation runs on every rank, but writing the store can take a while on rank 0
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return Dist(rank=rank, world=world, local_rank=local)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (attacks run on it), else ``model``."""
    return model.module if isinstance(model, DistributedDataParallel) else model
