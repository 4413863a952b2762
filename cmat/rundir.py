"""Run directories: one writer at a time, and ``--force`` that never loses a finished run.

- :class:`RunLock`: an exclusive ``fcntl.flock`` on ``<parent>/.<name>.lock`` (beside the run
  directory, so it survives the directory being swapped) held for the run's lifetime; the
  holder's PID is written into it, and a second run on the same directory is refused with one
  line naming that PID. The kernel releases the lock when the holder exits, however it exits.
- :func:`staging_dir` / :func:`swap_in`: ``--force`` on a finished run trains into a fresh
  hidden directory beside the target and swaps it in only when the new run has finished; a
  refused, failed or interrupted replacement leaves the old run untouched.
- :func:`write_progress` / :func:`read_progress`: ``progress.json``, where a running run is.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

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
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise CmatError(f"{self.run_dir} is in use by another {self.holder} (PID {holder}); wait for it or "
                                "choose another --out") from None
            raise CmatError(f"cannot lock {self.path}: {err.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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
