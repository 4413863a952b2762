"""What a run carries from task to task: the state a checkpoint holds (:class:`RunState`) and the
evaluations it may reuse (:class:`Evaluations`).

A task-boundary checkpoint is :meth:`RunState.to_checkpoint` of the state after the task (with
the networks, decisions and random-generator state beside it, :mod:`cmat.store`); resuming is
:meth:`RunState.from_checkpoint`. One dataclass for both, so what is saved is what is restored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from cmat.evaluate import FrozenCheck, model_fingerprint


@dataclass
class RunState:
    """The accuracy matrices and counters of a run after ``completed`` tasks.

    ``acc[attack][t][j]``: task j's accuracy after task t (attacked subset); ``clean_full[t][j]``
    the same on the whole test set; ``last[str(j)]``: task j's latest per-attack acc/f1/n;
    ``train_seconds``: wall seconds so far, evaluation included (the checkpoint's name for it);
    ``eval_seconds``: of which evaluating; ``per_task``: each finished task's cost record."""

    acc: dict
    clean_full: list = field(default_factory=list)
    last: dict = field(default_factory=dict)
    completed: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    global_step: int = 0
    grad_evals: int = 0
    per_task: list = field(default_factory=list)
    precision: Optional[dict] = None

    @classmethod
    def fresh(cls, columns) -> "RunState":
        return cls(acc={name: [] for name in columns})

    @classmethod
    def from_checkpoint(cls, state: dict) -> "RunState":
        """The state a checkpoint's resume record holds (older checkpoints lack the later keys)."""
        return cls(acc=state["acc"], clean_full=state.get("clean_full", state["acc"].get("clean", [])),
                   last=state["last"], completed=state["completed"], train_seconds=state["train_seconds"],
                   eval_seconds=state.get("eval_seconds", 0.0), global_step=state["global_step"],
                   grad_evals=int(state.get("grad_evals", 0)), per_task=list(state.get("per_task", [])),
                   precision=state.get("precision"))

    def to_checkpoint(self) -> dict:
        """The resume record (JSON-able): every field, under the names :meth:`from_checkpoint` reads."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def add_row(self, columns, results: list) -> None:
        """Append the accuracy row of the task just finished: ``results[j]`` is task j's evaluation."""
        for name in columns:
            self.acc[name].append([res[name]["acc"] for res in results])
        self.clean_full.append([res["clean"]["acc_full"] for res in results])
        for j, res in enumerate(results):
            self.note(j, columns, res)

    def replace_final(self, j: int, columns, res: dict) -> None:
        """Put a re-evaluation of task j into the last row."""
        for name in columns:
            self.acc[name][-1][j] = res[name]["acc"]
        self.clean_full[-1][j] = res["clean"]["acc_full"]
        self.note(j, columns, res)

    def note(self, j: int, columns, res: dict) -> None:
        self.last[str(j)] = {name: {k: res[name][k] for k in ("acc", "f1", "n")} for name in columns}


class Evaluations:
    """Which evaluations of a task can be reused instead of attacking again.

    ``cache``: (task, model fingerprint) → evaluation (an unchanged model gets the same bits
    back); ``previous``: task → its latest evaluation; ``frozen``: task → :class:`FrozenCheck`
    for tasks the method declares frozen (``evaluations_of(j) == 1``), probed
    ``FrozenCheck.PROBES_PER_TASK`` at a time, longest-unchecked first."""

    def __init__(self):
        self.cache: dict = {}
        self.previous: dict = {}
        self.frozen: dict = {}

    def probes(self) -> set:
        """The frozen tasks to probe this round (O(1) per task)."""
        order = sorted(self.frozen, key=lambda k: self.frozen[k].checked_after)
        return set(order[:FrozenCheck.PROBES_PER_TASK])

    def reusable(self, j: int, model, t: int, probe: set):
        """``(evaluation or None, fingerprint or None)``: a reusable evaluation of task j's model."""
        if j in self.frozen and (j not in probe or self.frozen[j].unchanged(model, t)):
            return self.previous[j], None  # declared frozen (and, when probed, the same logits bit for bit)
        key = (j, model_fingerprint(model))
        return self.cache.get(key), key[1]

    def remember(self, j: int, fingerprint: str, res: dict) -> None:
        """Keep ``res`` as task j's latest evaluation (dropping j's earlier one from the cache)."""
        self.cache = {k: v for k, v in self.cache.items() if v is not self.previous.get(j)}
        self.cache[(j, fingerprint)], self.previous[j] = res, res

    def freeze(self, j: int, model, task, res: dict, fingerprint: str, device, t: int) -> None:
        self.frozen[j] = FrozenCheck(model, task.test, res["clean"]["indices"], fingerprint, device, t)
