"""Where a result came from: the cmat version, the git commit of the source tree it ran from
(and whether that tree had uncommitted changes to tracked files), torch, Python and the machine.

:func:`provenance` is recorded in every ``results.json`` (``provenance``) so a committed result
names the code that made it. ``commit`` is None when cmat does not run from a git checkout
(a wheel install) or git is unavailable."""
from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
from typing import Optional



def source_commit(root: Optional[Path] = None) -> tuple:
    """``(commit, dirty)`` of the git checkout holding cmat's source, or ``(None, None)``."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


@functools.lru_cache(maxsize=None)
def provenance() -> dict:
    """``{"cmat", "commit", "dirty", "torch", "python", "machine", "argv"}`` of this process, read
    at the first call and the same for the process's lifetime: the CLI calls it as it starts, so a
    bench that runs for hours records the commit it loaded, whatever was committed meanwhile.
    (Callers must not modify the returned dict.)"""
    commit, dirty = source_commit()
    return {"cmat": _version("cmat"), "commit": commit, "dirty": dirty, "torch": _version("torch"),
            "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}",
            "argv": [Path(sys.argv[0]).name] + sys.argv[1:]}


def _version(package: str) -> Optional[str]:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
