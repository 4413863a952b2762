"""The study's plan: its cells, their keys (what a result depends on) and reuse of finished cells."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from cmat.errors import CmatError
from cmat.rundir import read_json_object
from cmat.nn.multihead import MultiHeadNet, TaskView
from cmat.transfer import build_transfer_model, check_compatible

# The study compares a standard source with a robust one and trains each target with the standard
# objective and the robust one: the configuration's objective (pgd by default; ``--objective
# crown-ibp`` makes it a certified study, with the preset's certified recipe for every network).
STANDARD = "standard"
CSV_COLUMNS = ("source_objective", "strategy", "target_objective", "clean", "pgd10", "pgd40", "worst", "certified",
               "train_seconds", "grad_evals")
ACCURACY_COLUMNS = ("clean", "pgd10", "pgd40", "aa", "worst", "certified")
FORMAT = 1  # bump when a cell's contents change meaning (invalidates reuse)


@dataclass(frozen=True)
class Cell:
    """One trained target model: ``source`` objective (``none`` for scratch), strategy, target objective."""
    source: str
    strategy: str
    target: str

    @property
    def name(self) -> str:
        return f"{self.source}-{self.strategy}-{self.target}"

    @property
    def label(self) -> str:
        src = "scratch" if self.source == "none" else f"{self.source} source"
        return f"{src}, {self.strategy}, {self.target} target"


def study_objectives(robust: str) -> tuple:
    """The objectives of the sources and of the targets: ``("standard", robust)``."""
    if robust == STANDARD:
        raise CmatError("the transfer study compares a standard source with a robust one: its objective must be a "
                        "robust one (pgd, trades, fast, free, ibp, crown-ibp), not standard")
    return (STANDARD, robust)


def reference_cell(robust: str = "pgd") -> Cell:
    """What every cell is compared with: scratch training with the robust objective."""
    return Cell("none", "scratch", robust)


def plan(strategies, robust: str = "pgd") -> list:
    """Every cell of the study, robust targets first (the long ones start early)."""
    objectives = study_objectives(robust)
    cells = [Cell(s, st, t) for s in objectives for st in strategies for t in objectives]
    cells += [Cell("none", "scratch", t) for t in objectives]
    return sorted(cells, key=lambda c: c.target != robust)


def source_config(cfg, objective: str, source_task: int):
    """The configuration of a source run: at-individual on the first ``source_task + 1`` tasks."""
    out = copy.deepcopy(cfg)
    out.method, out.max_tasks = "at-individual", source_task + 1
    out.objective.name = objective
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cell_key(cfg_yaml: str, cell: Cell, source_store: Optional[Path], settings: dict) -> str:
    """What a cell's result depends on: configuration, cell, source weights, study settings."""
    h = hashlib.sha256()
    for part in (str(FORMAT), cfg_yaml, cell.name, file_digest(source_store) if source_store else "none",
                 json.dumps(settings, sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def untrained_view(cfg, seq, source_task: int):
    """A plain untrained network of the run's architecture (what ``scratch`` re-initialises)."""
    src = seq[source_task]
    net = MultiHeadNet(cfg.model.arch, src.input_shape[0], src.input_shape[-1], [t.num_classes for t in seq],
                       [t.mean for t in seq], [t.std for t in seq], cfg.model.width)
    return TaskView(net, source_task)


def yaml_load(text: str) -> dict:
    """A configuration passed to a worker process as YAML text, parsed."""
    return yaml.safe_load(text)


def cell_problem(record: dict) -> Optional[str]:
    """What makes ``record`` not a finished cell's ``cell.json`` (None when nothing): the fields
    the study's tables and tests are computed from, with their types."""
    row, outcomes, indices = record.get("row"), record.get("outcomes"), record.get("indices")
    if not isinstance(row, dict) or not all(isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                                            for k in ("clean", "certified", "train_seconds", "grad_evals")):
        return "row lacks clean, certified, train_seconds or grad_evals"
    if not isinstance(indices, list) or record.get("n") != len(indices):
        return "indices and n disagree"
    if not isinstance(outcomes, dict) or not all(isinstance(v, list) and len(v) == len(indices)
                                                 for v in outcomes.values()):
        return "outcomes are not one bit per evaluated image"
    crit = record.get("critical_eps")
    if not isinstance(crit, dict) or not isinstance(record.get("verona"), list):
        return "critical_eps or verona is missing"
    for k in ("trainable_params", "eval_seconds", "verify_seconds"):
        if not isinstance(record.get(k), (int, float)):
            return f"{k} is missing"
    return None


def reusable_cell(path: Path, key: str, say=None) -> Optional[dict]:
    """A finished cell's record in ``path`` when its key and format match, else None (the cell
    trains again). A ``cell.json`` that is truncated, garbage or of another schema is never
    used: ``say`` gets one line naming it."""
    file = path / "cell.json"
    if not file.exists():
        return None
    try:
        record = read_json_object(file, "cell record")
    except CmatError as err:
        problem = str(err)
    else:
        if record.get("key") != key or record.get("format") != FORMAT:
            return None
        problem = cell_problem(record)
        if problem is None:
            return record
        problem = f"{file} is not a valid cell record: {problem}"
    if say is not None:
        say(f"{problem}; running {path.name} again")
    return None


def check_strategies(cfg, seq, source_task, target_task, strategies) -> None:
    """Every strategy name and the source/target shapes checked before anything trains."""
    view = untrained_view(cfg, seq, source_task)
    check_compatible(view.net.spec, seq[target_task])
    for s in strategies:
        build_transfer_model(view, s, seq[target_task].num_classes)
