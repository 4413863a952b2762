"""Seeding: one call seeds python, numpy and torch; attack generators derive from the run seed."""
from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (CPU and CUDA). With ``deterministic`` also ask
    torch for deterministic kernels (slower; errors on ops that have none)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers: derive numpy/random seeds from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def derived_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (run seed, task index, attack name, ...)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def generator(*parts) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derived_seed` of ``parts``."""
    g = torch.Generator()
    g.manual_seed(derived_seed(*parts))
    return g
