"""The HDF5 store: everything inference needs, nothing executable (no pickle).

Layout (format ``cmat-store``, version 3; docs/store.md)::

    /                      attrs: format, version, method, objective, tasks, task_names (JSON),
                           config (resolved YAML), decisions (JSON), sha256 (cmat.h5safe)
    /networks/<k>          attrs: spec (JSON: architecture, heads, normalisation statistics)
    /networks/<k>/state/<dtype>   all state-dict entries of one dtype, concatenated (bool ones
                                  bit-packed); attrs of ``state``: index (name, dtype, shape)
    /networks/<k>/owner           masked networks: all layers' owner ids, concatenated
    /networks/<k>/piggyback       all tasks' piggyback masks, bit-packed over the positions they
                                  can select, concatenated; attrs: index (task, layer, count)
    /tasks/<j>             attrs: name, classes (JSON), num_classes, network, head

A few datasets per network (:mod:`cmat.store.tensors`), each compact when small and chunked,
shuffled, gzip-compressed and fletcher32-checked when large (:mod:`cmat.store.arrays`); the
root SHA-256 covers every byte a loader reads. Version-2 stores (one dataset per tensor) still
load (:mod:`cmat.store.legacy`). The file is written under a temporary name in the same folder
and renamed, so a crash never leaves a half-written store behind.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from cmat.atomic import atomic_write_bytes
from cmat.config import from_dict, to_yaml
from cmat.errors import CmatError
from cmat.h5safe import sign, verify
from cmat.nn import build_network
from cmat.store.arrays import LIBVER, read_array, write_array
from cmat.store.tensors import read_masks, read_state, write_masks, write_state

__all__ = ["FORMAT", "VERSION", "READS", "LoadedRun", "load", "open_store", "save_run", "save_checkpoint",
           "read_checkpoint", "read_array", "write_array", "read_state", "write_state", "read_masks",
           "write_masks", "sign"]

FORMAT = "cmat-store"
VERSION = 3  # 2: root SHA-256 over everything (cmat.h5safe); 3: a few datasets per network
READS = (2, 3)  # versions this cmat loads


def save_run(path, method, seq, cfg, extra=None) -> Path:
    """Write the method's networks and per-task metadata to ``path`` atomically; ``extra(f)``
    may add groups (the resume state of a checkpoint) before the file is renamed into place."""
    return atomic_write_bytes(path, _build_run(method, seq, cfg, method.task_slots(), extra))


def _build_run(method, seq, cfg, slots, extra) -> memoryview:
    """The store file's bytes, built in memory: written with plain file I/O, a full disk or a
    read-only file system is a clean ``OSError`` instead of a failure inside HDF5's own writes
    (which h5py reports while deallocating, and which crashed the process)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=LIBVER) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["method"] = cfg.method
        f.attrs["objective"] = cfg.objective.name
        f.attrs["tasks"] = cfg.tasks
        f.attrs["task_names"] = json.dumps([seq[j].name for j in range(len(slots))])
        f.attrs["config"] = to_yaml(cfg)
        f.attrs["decisions"] = json.dumps(method.decisions)
        nets = f.create_group("networks")
        for k, net in enumerate(method.networks()):
            g = nets.create_group(str(k))
            g.attrs["spec"] = json.dumps(net.spec)
            write_state(g.create_group("state"), net.state_dict())
            if net.spec.get("masked"):
                write_masks(g, net)
        tg = f.create_group("tasks")
        for j, (net, head) in enumerate(slots):
            g = tg.create_group(str(j))
            g.attrs["name"] = seq[j].name
            g.attrs["classes"] = json.dumps(list(map(str, seq[j].classes)))
            g.attrs["num_classes"] = seq[j].num_classes
            g.attrs["network"] = net
            g.attrs["head"] = head
        if extra is not None:
            extra(f)
        sign(f)
    return buf.getbuffer()


def save_checkpoint(path, method, seq, cfg, state: dict, rng: torch.Tensor) -> Path:
    """A task-boundary checkpoint: the store of the tasks so far plus ``/resume`` (completed
    task count, accuracy rows, per-task evaluation, time spent, torch's RNG state)."""

    def extra(f):
        g = f.create_group("resume")
        g.attrs["state"] = json.dumps(state)
        write_array(g, "rng", rng.numpy())

    return save_run(path, method, seq, cfg, extra)


def read_checkpoint(path, cfg) -> dict:
    """The resume state of a checkpoint, refusing one whose configuration differs from ``cfg``."""
    import yaml

    run = LoadedRun(path)
    stored = yaml.safe_load(run.config_yaml)
    current = yaml.safe_load(to_yaml(cfg))
    diff = sorted(_diff_keys(stored, current))
    if diff:
        raise CmatError(f"cannot resume {path}: the configuration differs from the checkpoint's in "
                        f"{', '.join(diff[:5])}")
    with open_store(path) as f:
        try:
            state = json.loads(f["resume"].attrs["state"])
            rng = torch.from_numpy(np.array(read_array(f["resume"]["rng"])))
        except (KeyError, OSError, ValueError) as err:
            raise CmatError(f"checkpoint {path} is corrupt or incomplete: {_first_line(err)}") from None
    _check_resume_state(path, state, rng, len(run.task_names))
    return {**state, "rng": rng, "networks": run.networks, "decisions": run.decisions}


def _check_resume_state(path, state, rng, n_tasks: int) -> None:
    """Types and sizes of a checkpoint's resume state, so a damaged one is one line, not a crash
    tasks later: ``completed`` tasks in 1..n_tasks, one accuracy row per completed task of the
    right length, numbers where numbers belong, and an RNG state torch accepts."""
    def bad(why):
        raise CmatError(f"checkpoint {path} is corrupt: {why}; delete it and start the run again")

    if not isinstance(state, dict):
        bad("the resume state is not a mapping")
    done = state.get("completed")
    if not isinstance(done, int) or isinstance(done, bool) or not 1 <= done <= n_tasks:
        bad(f"'completed' is {done!r}, expected 1..{n_tasks}")
    acc = state.get("acc")
    if not isinstance(acc, dict) or not acc:
        bad("'acc' is not a mapping of accuracy matrices")
    for name, rows in acc.items():
        if not isinstance(rows, list) or len(rows) != done or any(
                not isinstance(r, list) or len(r) != i + 1 or not all(isinstance(a, (int, float)) for a in r)
                for i, r in enumerate(rows)):
            bad(f"accuracy matrix {name!r} does not have {done} lower-triangular rows of numbers")
    for key in ("train_seconds", "global_step"):
        if not isinstance(state.get(key), (int, float)) or isinstance(state.get(key), bool):
            bad(f"{key!r} is {state.get(key)!r}")
    if not isinstance(state.get("last"), dict):
        bad("'last' is not a mapping")
    if rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        bad(f"the saved RNG state has {rng.numel()} bytes, expected {torch.get_rng_state().numel()}")


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


class LoadedRun:
    """A trained run read back from its store: ``.task_names``, ``.model(j)``, ``.config``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open_store(self.path) as f:
            try:
                self.method = str(f.attrs["method"])
                self.objective = str(f.attrs["objective"])
                self.tasks = str(f.attrs["tasks"])
                self.task_names = json.loads(f.attrs["task_names"])
                if not (isinstance(self.task_names, list) and self.task_names
                        and all(isinstance(n, str) for n in self.task_names)):
                    raise ValueError("task_names is not a non-empty list of names")
                self.config_yaml = str(f.attrs["config"])
                self.decisions = json.loads(f.attrs.get("decisions", "{}"))
                self.networks = []
                for k in sorted(f["networks"], key=int):
                    g = f["networks"][k]
                    net = build_network(json.loads(g.attrs["spec"]))
                    net.load_state_dict(read_state(g["state"]))
                    if net.spec.get("masked"):
                        read_masks(g, net)
                    self.networks.append(net.eval())
                self.slots = []
                self.classes = []
                for j in range(len(self.task_names)):
                    g = f["tasks"][str(j)]
                    net_k, head = int(g.attrs["network"]), int(g.attrs["head"])
                    if not 0 <= net_k < len(self.networks):
                        raise ValueError(f"task {j} points to network {net_k}; the store has {len(self.networks)}")
                    heads = len(getattr(self.networks[net_k], "heads", []))
                    if not 0 <= head < heads:
                        raise ValueError(f"task {j} points to head {head}; network {net_k} has {heads}")
                    self.slots.append((net_k, head))
                    self.classes.append(json.loads(g.attrs["classes"]))
            except CmatError:
                raise
            except (KeyError, OSError, ValueError, RuntimeError, TypeError, IndexError, AttributeError) as err:
                raise CmatError(f"store {self.path} is corrupt or incomplete: {_first_line(err)}") from None

    def model(self, j: int) -> torch.nn.Module:
        """Task j's classifier (eval mode): [0,1] images → logits."""
        if not 0 <= j < len(self.task_names):
            raise CmatError(f"task {j} out of range: the store has tasks 0..{len(self.task_names) - 1}")
        net, head = self.slots[j]
        return self.networks[net].task_view(head).eval()

    @property
    def config(self):
        import yaml

        return from_dict(yaml.safe_load(self.config_yaml))


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def open_store(path) -> h5py.File:
    """Open a store read-only, refusing missing, non-HDF5, foreign and other-version files."""
    path = Path(path)
    if not path.exists():
        raise CmatError(f"no store at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CmatError(f"{path} is not a readable HDF5 store (truncated or corrupt): {_first_line(err)}") from None
    try:
        fmt = f.attrs.get("format")
    except (OSError, TypeError, ValueError):
        fmt = "unreadable"
    if not isinstance(fmt, str) or fmt != FORMAT:
        f.close()
        raise CmatError(f"{path} is not a cmat store (format {fmt!r})")
    ver = f.attrs.get("version", -1)
    if not isinstance(ver, (int, np.integer)) or int(ver) not in READS:
        f.close()
        shown = int(ver) if isinstance(ver, (int, np.integer)) else repr(ver)
        raise CmatError(f"{path} has store version {shown}; this cmat reads versions {', '.join(map(str, READS))}")
    try:
        verify(f, path)
    except BaseException:
        f.close()
        raise
    return f


def load(run_dir) -> LoadedRun:
    """``cmat.load(run_dir)``: the trained run in ``run_dir`` (or a store file path)."""
    p = Path(run_dir)
    return LoadedRun(p / "store.h5" if p.is_dir() else p)
