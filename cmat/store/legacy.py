"""Readers of the version-2 layout, kept so that every store written before version 3 loads.

Version 2 wrote one gzip + fletcher32 chunked dataset per tensor::

    /networks/<k>/state/<name>        one dataset per state-dict entry, flattened, attrs: shape,
                                      dtype (bool entries bit-packed: attrs packed, count, bool_shape)
    /networks/<k>/owner/<i>           owner ids of masked layer i (smallest unsigned type)
    /networks/<k>/piggyback/<j>/<i>   task j's piggyback bits of layer i over the positions it can
                                      select, bit-packed, attrs: count

Each of those small chunked datasets carried an object header and a chunk B-tree: the default
digits run's store was 2.11× its float32 weights, half of it metadata. Nothing writes this
layout any more; :mod:`cmat.store.tensors` reads it through these functions.
"""
from __future__ import annotations

import h5py
import numpy as np
import torch

from cmat.store.arrays import read_array, selectable


def read_state(group: h5py.Group) -> dict:
    out = {}
    for name, ds in group.items():
        arr = read_array(ds)
        if ds.attrs.get("packed", False):
            shape = tuple(int(s) for s in ds.attrs["bool_shape"])
            arr = np.unpackbits(arr, count=int(ds.attrs["count"])).astype(bool).reshape(shape)
        out[name] = torch.from_numpy(np.array(arr))
    return out


def read_masks(group: h5py.Group, net) -> None:
    layers = net.masked_layers()
    for i, m in enumerate(layers):
        o = torch.from_numpy(read_array(group["owner"][str(i)]).astype(np.int16))
        if o.shape != m.owner.shape:
            raise ValueError(f"owner tensor {i} has shape {tuple(o.shape)}, expected {tuple(m.owner.shape)}")
        m.owner = o.to(m.owner.device)
        m.invalidate()
    for j, tg in group["piggyback"].items():
        tid = int(j) + 1
        for i, ds in tg.items():
            m = layers[int(i)]
            count = int(ds.attrs["count"])
            sel = selectable(m, tid)
            if int(sel.sum()) != count:
                raise ValueError(f"piggyback mask of task {j}, layer {i} does not match the owner tensor")
            bits = np.unpackbits(read_array(ds), count=count).astype(bool)
            full = torch.zeros(m.weight.shape, dtype=torch.bool)
            out, inp = m.shapes[tid]
            view = full[:out, :inp]
            view[sel] = torch.from_numpy(bits)
            m.set_bits(tid, full)
