"""Per-image evaluation outcomes (``eval.h5`` beside ``results.json``).

For the final evaluation row (after the last task), per task j and column a (every attack
run, ``worst`` included), one bit per evaluated test image: 1 = classified correctly clean and
at the attack's point. Worst cases, pooled confidence intervals and paired tests (McNemar) are
computed from these bits, never estimated from the averaged columns.

Layout (HDF5, contiguous datasets — a few bytes each, so no chunking; the whole file is
covered by a SHA-256 (:mod:`cmat.h5safe`); written to a temporary name and renamed):

    /                 attrs: format "cmat-eval", version 1, columns (JSON list), task_names (JSON)
    /tasks/<j>        attrs: n (images evaluated), n_test (test-set size)
    /tasks/<j>/indices        int64 [n]  evaluated test-set indices (sorted)
    /tasks/<j>/correct/<a>    uint8 [ceil(n/8)]  np.packbits of the outcome bits
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from cmat.atomic import atomic_write_bytes
from cmat.errors import CmatError
from cmat.h5safe import sign, verify

FORMAT, VERSION = "cmat-eval", 1  # signed like the store (cmat.h5safe)
_DS: dict = {}  # tiny datasets: chunked gzip + fletcher32 made a 400-bit file ~100 KB


def write_outcomes(path, task_names: list, per_task: list) -> Path:
    """``per_task[j]`` is :func:`cmat.evaluate.evaluate_task`'s result for task j."""
    import h5py

    columns = [c for c in per_task[0] if "correct" in per_task[0][c]]
    buf = io.BytesIO()  # built in memory, written with plain I/O (see cmat.store._build_run)
    with h5py.File(buf, "w") as f:
        f.attrs["format"], f.attrs["version"] = FORMAT, VERSION
        f.attrs["columns"], f.attrs["task_names"] = json.dumps(columns), json.dumps(list(task_names))
        for j, res in enumerate(per_task):
            g = f.create_group(f"tasks/{j}")
            g.attrs["n"], g.attrs["n_test"] = int(res["clean"]["n"]), int(res["clean"]["n_full"])
            g.create_dataset("indices", data=np.asarray(res["clean"]["indices"], dtype=np.int64), **_DS)
            for c in columns:
                g.create_dataset(f"correct/{c}", data=np.packbits(np.asarray(res[c]["correct"], dtype=bool)), **_DS)
        sign(f)
    return atomic_write_bytes(path, buf.getbuffer())


def read_outcomes(path) -> dict:
    """``{"columns", "task_names", "indices": [array per task], "correct": {column: [bool array
    per task]}}``; a missing or foreign file is a one-line :class:`CmatError`."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise CmatError(f"no per-image outcomes at {path} (runs from before eval.h5 existed cannot be paired)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT or f.attrs.get("version") != VERSION:
                raise CmatError(f"{path} is not a {FORMAT} v{VERSION} file")
            verify(f, path)
            columns, names = json.loads(f.attrs["columns"]), json.loads(f.attrs["task_names"])
            out = {"columns": columns, "task_names": names, "indices": [], "correct": {c: [] for c in columns}}
            for j in range(len(names)):
                g = f[f"tasks/{j}"]
                n = int(g.attrs["n"])
                idx = g["indices"][()]
                if idx.shape != (n,):
                    raise CmatError(f"{path}: task {j} indices have shape {idx.shape}, expected ({n},)")
                out["indices"].append(idx)
                for c in columns:
                    out["correct"][c].append(np.unpackbits(g[f"correct/{c}"][()], count=n).astype(bool))
            return out
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise CmatError(f"{path} is unreadable or corrupt: {err}") from None


def worst_over(run_dir, files=("eval.h5",), column: str = "worst") -> tuple:
    """``(indices, correct)``: the images of ``files[0]`` and, per task, ``column`` of every file
    AND'ed on those images -- the per-image worst over a run's own evaluation and later ones of
    the same models (``cmat eval RUN --save``: ``eval-all.h5``). An image a later file lacks, or a
    file without ``column``, is a one-line :class:`CmatError`."""
    run_dir = Path(run_dir)
    first = read_outcomes(run_dir / files[0])
    indices = first["indices"]
    correct = None
    for name in files:
        o = first if name == files[0] else read_outcomes(run_dir / name)
        if column not in o["correct"]:
            raise CmatError(f"{run_dir / name} has no per-image '{column}' outcomes")
        if len(o["indices"]) != len(indices):
            raise CmatError(f"{run_dir / name} has {len(o['indices'])} tasks, {files[0]} has {len(indices)}")
        here = []
        for j, idx in enumerate(indices):
            pos = {int(i): k for k, i in enumerate(o["indices"][j])}
            missing = [int(i) for i in idx if int(i) not in pos]
            if missing:
                raise CmatError(f"{run_dir / name} did not evaluate image {missing[0]} of task {j}; cannot combine")
            here.append(o["correct"][column][j][[pos[int(i)] for i in idx]])
        correct = here if correct is None else [a & b for a, b in zip(correct, here)]
    return indices, correct
