"""Atomic file writes: a temporary name in the same folder, then ``os.replace``.

A crash never leaves a half-written file under the real name; an ``OSError`` (full disk,
read-only file system, permissions) becomes one :class:`CmatError` line naming the path, and
the temporary is removed on every failure path.
"""
from __future__ import annotations

import os
from pathlib import Path

from cmat.errors import CmatError


def atomic_write_bytes(path, data) -> Path:
    """Write ``data`` (bytes or a buffer) to ``path`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except OSError as err:
        raise CmatError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
