"""Run directories: one writer at a time, and ``--force`` that never loses a finished run.

- :class:`RunLock`: an exclusive ``fcntl.flock`` on ``<parent>/.<name>.lock`` (beside the run
  directory, so it survives the directory being swapped) held for the run's lifetime; the
  holder's PID is written into it, and a second run on the same directory is refused with one
  line naming that PID and what holds it ("cmat bench", "SLURM job 12", ...). The kernel
  releases the lock when the holder exits, however it exits. :func:`lock_runs` holds many.
- :func:`staging_dir` / :func:`swap_in`: ``--force`` on a finished run trains into a fresh
  hidden directory beside the target and swaps it in only when the new run has finished; a
  refused, failed or interrupted replacement leaves the old run untouched.
- :func:`write_progress` / :func:`read_progress`: ``progress.json``, where a running run is.
- :func:`read_results`: a finished run's ``results.json`` parsed and checked (one-line
  :class:`CmatError` when truncated, garbage or of another schema; nothing is built from it).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

from cmat.errors import CmatError


class RunLock:
    def __init__(self, run_dir, holder: str = "cmat run"):
        self.run_dir = Path(run_dir)
        self.holder = holder  # what the refusal names: "cmat run", "cmat bench", ...
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self._fd = None

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CmatError(f"cannot create the run directory's lock {self.path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            pid, _, held_by = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise CmatError(f"{self.run_dir} is in use by another {held_by or self.holder} "
                                f"(PID {pid or 'unknown'}); "
                                "wait for it or choose another --out") from None
            raise CmatError(f"cannot lock {self.path}: {err.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.holder}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_runs(run_dirs, holder: str) -> ExitStack:
    """Every directory's :class:`RunLock`, held until the returned stack closes; the first one
    held elsewhere is refused (one line) and releases those taken before it."""
    stack = ExitStack()
    try:
        for run_dir in run_dirs:
            stack.enter_context(RunLock(run_dir, holder))
    except BaseException:
        stack.close()
        raise
    return stack


def staging_dir(run_dir) -> Path:
    """A fresh hidden directory beside ``run_dir`` for a replacement run (removed if present)."""
    run_dir = Path(run_dir)
    stage = run_dir.parent / f".{run_dir.name}.new"
    shutil.rmtree(stage, ignore_errors=True)
    return stage


def swap_in(stage, run_dir) -> None:
    """Replace ``run_dir`` by the finished ``stage``: two renames, then the old run is deleted."""
    stage, run_dir = Path(stage), Path(run_dir)
    old = run_dir.parent / f".{run_dir.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    try:
        if run_dir.exists():
            os.replace(run_dir, old)
        os.replace(stage, run_dir)
    except OSError as err:
        raise CmatError(f"could not move the finished run from {stage} to {run_dir}: {err.strerror}; "
                        f"the new run is in {stage}") from None
    shutil.rmtree(old, ignore_errors=True)


def write_progress(run_dir, task: int, n_tasks: int, task_name: str, elapsed: float,
                   expected_total=None) -> None:
    """``run_dir/progress.json``: where a run is (task ``task`` of ``n_tasks``, 1-based, now
    training), its wall seconds so far and the estimate's expected total (None when not
    measured) — what a bench's live table reads while the run goes on in another process."""
    path = Path(run_dir) / "progress.json"
    tmp = path.with_name(f".progress.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"task": task, "n_tasks": n_tasks, "task_name": task_name, "elapsed": elapsed,
                               "expected_total": expected_total, "time": time.time()}))
    os.replace(tmp, path)  # a reader never sees half a record


def read_progress(run_dir):
    """The last :func:`write_progress` record, or None (not started, or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def read_json_object(path, what: str) -> dict:
    """A JSON object from ``path``; a missing, truncated or garbage file, or JSON that is not an
    object, is a one-line :class:`CmatError` naming ``path`` as not a valid ``what``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CmatError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CmatError(f"{path} is not a valid {what}: {err}") from None
    if not isinstance(data, dict):
        raise CmatError(f"{path} is not a valid {what}: a JSON {type(data).__name__}, not an object")
    return data


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fraction(x) -> bool:
    return _number(x) and 0 <= x <= 1


def results_problem(results: dict) -> Optional[str]:
    """What makes ``results`` not a finished run's results.json (None when nothing): the
    fields a report, a bench or a study computes from, with their types."""
    names = results.get("task_names")
    if results.get("format", "cmat-results") != "cmat-results":
        return f"format {results.get('format')!r}, not cmat-results"
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "task_names is not a non-empty list of names"
    for key in ("method", "objective", "tasks"):
        if not isinstance(results.get(key), str):
            return f"{key!r} is missing"
    acc, summary, cost = results.get("acc"), results.get("summary"), results.get("cost")
    if not isinstance(acc, dict) or not acc or not isinstance(summary, dict):
        return "acc or summary holds no accuracies"
    for col, rows in acc.items():
        if not (isinstance(rows, list) and len(rows) == len(names) and all(
                isinstance(r, list) and len(r) == i + 1 and all(map(_fraction, r)) for i, r in enumerate(rows))):
            return f"acc[{col!r}] is not a lower-triangular matrix of {len(names)} rows of fractions"
        s = summary.get(col)
        if not (isinstance(s, dict) and _fraction(s.get("acc")) and _number(s.get("bwt"))
                and _number(s.get("forgetting")) and isinstance(s.get("n", 0), int)):
            return f"summary[{col!r}] lacks acc, bwt, forgetting or n"
    f1 = results.get("f1")
    if not (isinstance(f1, dict) and isinstance(f1.get("clean"), list) and all(map(_number, f1["clean"]))):
        return "f1['clean'] is not a list of numbers"
    if not (isinstance(cost, dict) and all(_number(cost.get(k)) for k in ("params_total", "store_bytes",
                                                                            "train_seconds"))):
        return "cost lacks params_total, store_bytes or train_seconds"
    if not isinstance(results.get("attacks"), dict):
        return "attacks is missing"
    return None


def read_results(path) -> dict:
    """A run's ``results.json`` (``path`` is the file or its run directory), checked by
    :func:`results_problem`; else one line naming the file and what is wrong with it."""
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    results = read_json_object(path, "cmat results file")
    problem = results_problem(results)
    if problem:
        raise CmatError(f"{path} is not a valid cmat results file: {problem}")
    return results
