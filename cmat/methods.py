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
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cmat.checks import number
from cmat.errors import CmatError
from cmat.nn import MultiHeadNet
from cmat.nn.masked import MaskedMultiHeadNet

METHODS: dict = {}  # name -> Method subclass, filled by register (cmat.catalog imports the built-in ones)


def register(cls):
    """Class decorator: register a Method subclass under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Option:
    """One method option, declared on the method's class (``options = {"key": Option(...)}``):
    its default, its help line and what it accepts — a number in [lo, hi] (an integer where
    ``integer``), one of ``words``, a bool (``kind="bool"``) or a path (``kind="path"``). A
    default of ``None`` also accepts ``None`` (the method then derives the value, as its help says)."""

    default: Any
    help: str
    lo: float = -math.inf
    hi: float = math.inf
    integer: bool = False
    words: tuple = ()
    kind: str = "number"

    def read(self, key: str, value):
        """``value`` checked (one :class:`CmatError` line naming ``method_options.key`` if not)."""
        where = f"method_options.{key}"
        if value is None and self.default is None:
            return None
        if isinstance(value, str) and value in self.words:
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise CmatError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind == "path":
            if not isinstance(value, str):
                raise CmatError(f"{where} must be a path, got {value!r}")
            return value
        try:
            return number(where, value, self.lo, self.hi, integer=self.integer)
        except CmatError as err:
            if not self.words:
                raise
            raise CmatError(f"{err} ({where} may also be {' or '.join(self.words)})") from None

    def accepts(self) -> str:
        """What the option takes, for ``cmat methods``: ``[0, 1]``, ``individual | none | [0, 2]``."""
        if self.kind != "number":
            return self.kind
        rng = f"{'integer ' if self.integer else ''}[{_fmt(self.lo)}, {_fmt(self.hi)}]"
        return " | ".join([*self.words, rng])


def _fmt(v) -> str:
    return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:g}"


def read_options(declared: dict, given: dict) -> dict:
    """Every declared option's value: ``given[key]`` checked by its :class:`Option`, else its
    default. Keys the method does not declare are not read (a bench shares one ``method_options``
    among its methods; :func:`unknown_options` finds typos)."""
    return {key: opt.read(key, given.get(key, opt.default)) for key, opt in declared.items()}


def unknown_options(given: dict, classes) -> list:
    """The keys of ``given`` that none of ``classes`` (Method subclasses) declares."""
    known = {key for cls in classes for key in cls.options}
    return sorted(k for k in given if k not in known)


class Method(ABC):
    """Base class. Subclasses set ``name`` and override the hooks they need, and declare what
    the engine and the CLI read from the class: ``options`` (key → :class:`Option`; read into
    ``self.opts``), ``masked`` (trains masked layers: the cost estimate times those) and
    ``supports_ddp`` (its loss is one forward of the trainer's model, so torchrun can wrap it)."""

    name = "base"
    options: ClassVar[dict] = {}
    masked: ClassVar[bool] = False
    supports_ddp: ClassVar[bool] = False

    def __init__(self, cfg, seq, device):
        self.cfg = cfg
        self.seq = seq
        self.device = torch.device(device)
        self.decisions: dict = {}
        self.opts = read_options(self.options, cfg.method_options)

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


class OneNetwork(Method):
    """A method whose tasks share one network ``self.net`` with a head per task (CMAT, PackNet,
    SupSup, WSN, HAT, at-finetune): the store saves it, task j is its head j, and a checkpoint
    gives it back (subclasses that keep more state extend :meth:`restore`)."""

    def restore(self, networks: list, decisions: dict) -> None:
        self.net = networks[0].to(self.device)
        self.decisions = decisions

    def networks(self) -> list:
        return [self.net]

    def task_slots(self) -> list:
        return [(0, j) for j in range(len(self.net.heads))]


class MaskedMethod(OneNetwork):
    """A method on one masked multi-task network (:class:`cmat.nn.masked.MaskedMultiHeadNet`,
    built here): CMAT, PackNet, SupSup, WSN. The layers own weights by id; network task t is
    layer id ``self.layer(t)`` (t + 1: 0 means free), the one conversion between the two."""

    masked = True

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        c, h, _ = seq[0].input_shape
        self.net = MaskedMultiHeadNet(cfg.model.arch, c, h, cfg.model.width).to(self.device)

    def layer(self, t: int) -> int:
        """The masked layers' owner id of network task t."""
        return self.net.layer_id(t)
