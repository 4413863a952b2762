"""The Method interface and its registry.

A method is a small class with a few hooks; the engine (:mod:`cmat.engine`) owns the task loop,
training loop, evaluation, logging and the store. For each task t the engine calls
``before_task(t, task)``, ``train_task(t, task, trainer)``, ``after_task(t, task)``, then
evaluates ``model_for(j)`` for every j ≤ t.
Methods register by name (:func:`register`); :mod:`cmat.catalog` imports the built-in ones and
looks names up, so this module never imports a method. ``networks()`` and ``task_slots()`` tell the store
what to save: the list of networks and, per task, ``(network index, head index)``.
"""
from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod

import torch
from torch import nn

from cmat.errors import CmatError
from cmat.nn import MultiHeadNet

METHODS: dict = {}  # name -> Method subclass, filled by register (cmat.catalog imports the built-in ones)


def register(cls):
    """Class decorator: register a Method subclass under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def option(opts: dict, key: str, default, kind=float, lo=None, hi=None, allow_none: bool = False):
    """``method_options[key]`` (else ``default``) as a finite ``kind`` in [lo, hi]; anything else
    is a one-line :class:`CmatError` naming the option (checked before a run writes anything)."""
    value = opts.get(key, default)
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (kind is not int or float(value).is_integer())
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        rng = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise CmatError(f"method_options.{key} must be {'an integer' if kind is int else 'a number'}{rng}, "
                        f"got {value!r}")
    return kind(value)


class Method(ABC):
    """Base class. Subclasses set ``name`` and override the hooks they need."""

    name = "base"

    def __init__(self, cfg, seq, device):
        self.cfg = cfg
        self.seq = seq
        self.device = torch.device(device)
        self.decisions: dict = {}

    def new_network(self, task_indices) -> MultiHeadNet:
        """A network for the configured architecture with heads for ``task_indices``."""
        tasks = [self.seq[j] for j in task_indices]
        c, h, _ = tasks[0].input_shape
        return MultiHeadNet(self.cfg.model.arch, c, h, [t.num_classes for t in tasks],
                            [t.mean for t in tasks], [t.std for t in tasks], self.cfg.model.width).to(self.device)

    def before_task(self, t: int, task) -> None:
        pass

    @abstractmethod
    def train_task(self, t: int, task, trainer) -> None:
        """Train task t (call ``trainer.fit`` with the parameters and hooks it needs)."""

    def after_task(self, t: int, task) -> None:
        pass

    def planned_phases(self, t: int, task) -> list:
        """The training phases task t will run, for the cost estimate (:mod:`cmat.estimate`):
        dicts ``name``, ``epochs`` and optionally ``expected_times``/``max_times`` (a phase that
        may be skipped or repeated). Default: one phase of ``train.epochs``."""
        return [{"name": "train", "epochs": self.cfg.train.epochs}]

    def evaluations_of(self, j: int, n_tasks: int) -> int:
        """How many times task j's model is evaluated with new weights over the run (the engine
        reuses an unchanged model's evaluation): by default after every task from j on."""
        return n_tasks - j

    def model_for(self, j: int) -> nn.Module:
        """Task j's classifier ``x ↦ logits`` (images in [0, 1])."""
        net, head = self.task_slots()[j]
        return self.networks()[net].task_view(head)

    def restore(self, networks: list, decisions: dict) -> None:
        """Take back the state of a task-boundary checkpoint (networks as ``networks()``
        returned them, and the decisions so far)."""
        raise CmatError(f"method {self.name} cannot resume from a checkpoint")

    @abstractmethod
    def networks(self) -> list:
        """The networks the store saves, in a fixed order."""

    @abstractmethod
    def task_slots(self) -> list:
        """Per trained task: ``(index into networks(), head index)``."""
