"""Authenticated HDF5 files: a root SHA-256 over everything a loader trusts.

:func:`sign` (called last, on a file open for writing) and :func:`verify` (on open for reading)
walk the file in sorted order and hash a canonical serialisation of every group, dataset
(dtype, shape, contents) and attribute (name, type, value), except the root attribute
``sha256`` that holds the digest. Anything a loader would read — a weight, an owner index, a
task's head attribute, the stored configuration — is covered, so a flipped byte anywhere is
refused. While walking, :func:`verify` also refuses soft and external links (h5py would follow
them into other files), datasets that are not plain numeric arrays (vlen, compound, object
dtypes) and datasets larger than :data:`MAX_ELEMENTS` elements, *before* reading them.
"""
from __future__ import annotations

import hashlib

import h5py
import numpy as np

from cmat.errors import CmatError

DIGEST = "sha256"
MAX_ELEMENTS = 2 ** 31  # 8 GiB of float32: larger than any network cmat builds
NUMERIC_KINDS = "biuf"


def _attr_bytes(value) -> bytes:
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, bytes):
        return b"b" + value
    arr = np.asarray(value)
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise ValueError(f"attribute of unsupported type {arr.dtype}")
    return b"a" + arr.dtype.str.encode() + repr(arr.shape).encode() + np.ascontiguousarray(arr).tobytes()


def _hash_attrs(h, obj, root: bool) -> None:
    for name in sorted(obj.attrs):
        if root and name == DIGEST:
            continue
        h.update(b"\x00attr:" + name.encode() + b"=" + _attr_bytes(obj.attrs[name]))


def _walk(h, group: h5py.Group, prefix: str, where) -> None:
    for name in sorted(group):
        path = f"{prefix}/{name}"
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise CmatError(f"{where}: {path} is a {type(link).__name__}; links are refused")
        obj = group[name]
        if isinstance(obj, h5py.Group):
            h.update(b"\x00group:" + path.encode())
            _hash_attrs(h, obj, False)
            _walk(h, obj, path, where)
            continue
        if not isinstance(obj, h5py.Dataset):
            raise CmatError(f"{where}: {path} is not a group or dataset")
        if obj.dtype.kind not in NUMERIC_KINDS or obj.dtype.names is not None:
            raise CmatError(f"{where}: dataset {path} has unsupported dtype {obj.dtype}")
        if obj.size > MAX_ELEMENTS:
            raise CmatError(f"{where}: dataset {path} declares {obj.size:,} elements (limit {MAX_ELEMENTS:,})")
        data = np.ascontiguousarray(obj[()])
        h.update(b"\x00dataset:" + path.encode() + data.dtype.str.encode() + repr(data.shape).encode())
        h.update(data.tobytes())
        _hash_attrs(h, obj, False)


def digest(f: h5py.File, where="file") -> str:
    h = hashlib.sha256(b"cmat-h5safe-v1")
    _hash_attrs(h, f, True)
    _walk(h, f, "", where)
    return h.hexdigest()


def sign(f: h5py.File) -> None:
    """Store the digest of everything written so far (call last, before closing)."""
    f.attrs[DIGEST] = digest(f)


def verify(f: h5py.File, where) -> None:
    """Refuse a file whose digest does not match (a changed byte, attribute or object), that has
    none, or that holds links, non-numeric or oversized datasets (one-line :class:`CmatError`)."""
    stored = f.attrs.get(DIGEST)
    if not isinstance(stored, str):
        raise CmatError(f"{where} has no valid checksum; refusing to trust it")
    try:
        actual = digest(f, where)
    except CmatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        text = str(err).strip().splitlines()
        raise CmatError(f"{where} is corrupt: {text[0] if text else type(err).__name__}") from None
    if actual != stored:
        raise CmatError(f"{where} fails its checksum (changed or corrupted after it was written); refusing it")
