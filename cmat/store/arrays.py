"""How one array becomes one HDF5 dataset (the layout rule of store version 3).

An array is **compressed** (chunked, in chunks of up to :data:`CHUNK_BYTES` so that even a large
one has a few chunks and a small chunk index; byte-shuffled for multi-byte types, gzip,
fletcher32) only when gzip is estimated to save more than a chunked dataset's own overhead
(:data:`CHUNK_OVERHEAD`); the estimate compresses the array's first chunk. Otherwise it is
stored unfiltered: **compact** (the bytes inside the dataset's object header, no separate data
block) up to :data:`COMPACT_BYTES`, **contiguous** above. Unfiltered datasets carry no
fletcher32 of their own; the root SHA-256 of :mod:`cmat.h5safe` covers every byte a loader
reads, so corruption is refused either way.
"""
from __future__ import annotations

import zlib

import h5py
import numpy as np
import torch

COMPACT_BYTES = 63 * 1024  # HDF5 caps a compact dataset's object-header message at 64 KiB
CHUNK_BYTES = 1 << 20
CHUNK_OVERHEAD = 512  # bytes a chunked, filtered dataset costs beyond a compact one (HDF5 >= 1.10 format)
GZIP_LEVEL = 4
LIBVER = ("v110", "v110")  # file format: readable by HDF5 >= 1.10; single-chunk datasets need no B-tree


def _compresses(flat: np.ndarray, chunk: int) -> bool:
    """Whether gzip (after HDF5's byte shuffle) is estimated to save more than the chunk overhead,
    judged on the first chunk."""
    head = flat[:chunk].view(np.uint8).reshape(-1, flat.itemsize).T  # the shuffle filter's byte order
    packed = len(zlib.compress(np.ascontiguousarray(head).tobytes(), GZIP_LEVEL))
    return (head.size - packed) * flat.size / max(1, min(flat.size, chunk)) > CHUNK_OVERHEAD


def create(group: h5py.Group, name: str, flat: np.ndarray) -> h5py.Dataset:
    """A 1-D dataset holding ``flat`` under the layout rule above."""
    flat = np.ascontiguousarray(flat).reshape(-1)
    chunk = max(1, min(flat.size, CHUNK_BYTES // flat.itemsize))
    if flat.size and _compresses(flat, chunk):
        return group.create_dataset(name, data=flat, chunks=(chunk,), shuffle=flat.itemsize > 1,
                                    compression="gzip", compression_opts=GZIP_LEVEL, fletcher32=True)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT if flat.nbytes <= COMPACT_BYTES else h5py.h5d.CONTIGUOUS)
    return group.create_dataset(name, data=flat, dcpl=dcpl)


def write_array(group: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
    """Store ``array`` flattened (layout rule above), remembering its shape (attr ``shape``)."""
    ds = create(group, name, array)
    ds.attrs["shape"] = np.asarray(array.shape, dtype=np.int64)
    return ds


def read_array(ds: h5py.Dataset) -> np.ndarray:
    shape = np.asarray(ds.attrs["shape"])
    if shape.dtype.kind not in "iu" or shape.ndim != 1 or (shape < 0).any() or int(np.prod(shape)) != ds.size:
        raise ValueError(f"dataset {ds.name} has {ds.size} elements but declares shape {shape.tolist()}")
    return ds[()].reshape(tuple(int(s) for s in shape))


def selectable(layer, tid: int) -> torch.Tensor:
    """Positions task ``tid``'s piggyback mask can select: earlier tasks' weights in its slice."""
    out, inp = layer.shapes[tid]
    o = layer.owner[:out, :inp]
    return (o > 0) & (o < tid)
