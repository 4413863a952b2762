"""A network's tensors in store version 3: one dataset per kind, with an index.

Under ``/networks/<k>``::

    state/<dtype>   every state-dict entry of that dtype (``float32``, ``int64``, …) flattened and
                    concatenated in index order; ``state/bool`` holds the bool entries (HAT's unit
                    gates), each bit-packed (``np.packbits``) to whole bytes and concatenated
    state           attrs: index (JSON ``[[name, dtype, shape], …]``, state-dict order)
    owner           masked networks: every masked layer's owner ids (0 = free), flattened and
                    concatenated in layer order, in the smallest unsigned type that holds them
    piggyback       every task's binary piggyback mask of every layer, bit-packed over only the
                    positions it can select (earlier tasks' weights in its slice), each to whole
                    bytes, concatenated; attrs: index (JSON ``[[task j, layer i, count], …]``)

Offsets are not stored: they follow from the index (and, for owners, from the layers' shapes),
and a reader checks that the parts add up to the dataset exactly. The datasets follow the
layout rule of :mod:`cmat.store.arrays`. Version-2 groups (one dataset per tensor) are read by
:mod:`cmat.store.legacy`.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import torch

from cmat.store import legacy
from cmat.store.arrays import create, selectable

DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


def write_state(group: h5py.Group, state: dict) -> None:
    """The state dict as one dataset per dtype plus the index attribute (module docstring)."""
    index, parts = [], {}
    for name, tensor in state.items():
        arr = tensor.detach().cpu().numpy()
        dtype = str(tensor.dtype).replace("torch.", "")
        index.append([name, dtype, list(arr.shape)])
        parts.setdefault(dtype, []).append(np.packbits(arr.reshape(-1)) if dtype == "bool" else arr.reshape(-1))
    group.attrs["index"] = json.dumps(index)
    for dtype, arrays in parts.items():
        create(group, dtype, np.concatenate(arrays))


def state_index(group: h5py.Group) -> list:
    """``[(name, dtype, shape), …]`` of a version-3 state group, checked."""
    index = json.loads(group.attrs["index"])
    ok = isinstance(index, list) and all(
        isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and e[1] in DTYPES
        and isinstance(e[2], list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in e[2])
        for e in index)
    if not ok:
        raise ValueError(f"{group.name} has a malformed index")
    return [(name, dtype, tuple(shape)) for name, dtype, shape in index]


def read_state(group: h5py.Group) -> dict:
    if "index" not in group.attrs:
        return legacy.read_state(group)
    index = state_index(group)
    kinds = {dtype for _, dtype, _ in index}
    if set(group) != kinds:
        raise ValueError(f"{group.name} holds datasets {sorted(group)}, its index names {sorted(kinds)}")
    blobs, offsets = {}, dict.fromkeys(kinds, 0)
    for dtype in kinds:
        blobs[dtype] = group[dtype][()]
        want = np.dtype(np.uint8 if dtype == "bool" else dtype)
        if blobs[dtype].dtype != want or blobs[dtype].ndim != 1:
            raise ValueError(f"{group.name}/{dtype} is {blobs[dtype].dtype}, expected a 1-D {want} array")
    out = {}
    for name, dtype, shape in index:
        n = int(np.prod(shape))
        size = (n + 7) // 8 if dtype == "bool" else n
        part = blobs[dtype][offsets[dtype]:offsets[dtype] + size]
        offsets[dtype] += size
        if part.size != size:
            raise ValueError(f"{group.name}/{dtype} ends before entry {name}")
        arr = np.unpackbits(part, count=n).astype(bool) if dtype == "bool" else np.array(part)
        out[name] = torch.from_numpy(arr.reshape(shape))
    short = [d for d in kinds if offsets[d] != blobs[d].size]
    if short:
        raise ValueError(f"{group.name}/{short[0]} holds {blobs[short[0]].size} values, its index {offsets[short[0]]}")
    return out


def write_masks(group: h5py.Group, net) -> None:
    """Owners and piggyback masks of a masked network as two datasets (module docstring)."""
    layers = net.masked_layers()
    owners = np.concatenate([m.owner.cpu().numpy().reshape(-1) for m in layers])
    create(group, "owner", owners.astype(np.min_scalar_type(max(int(owners.max(initial=0)), 0))))
    index, packed = [], []
    for tid in sorted({tid for m in layers for tid in m.bits}):
        for i, m in enumerate(layers):
            if tid in m.bits:
                out, inp = m.shapes[tid]
                sel = m.mask_bits(tid)[:out, :inp][selectable(m, tid)].cpu().numpy()
                packed.append(np.packbits(sel))
                index.append([tid - 1, i, int(sel.size)])
    ds = create(group, "piggyback", np.concatenate(packed) if packed else np.zeros(0, np.uint8))
    ds.attrs["index"] = json.dumps(index)


def piggyback_index(group: h5py.Group) -> list:
    """``[(task j, layer i, count), …]`` of a version-3 network group's piggyback masks, checked."""
    index = json.loads(group["piggyback"].attrs["index"])
    if not isinstance(index, list) or not all(
            isinstance(e, list) and len(e) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                        for v in e) for e in index):
        raise ValueError(f"{group.name}/piggyback has a malformed index")
    return [tuple(e) for e in index]


def read_masks(group: h5py.Group, net) -> None:
    if isinstance(group.get("owner"), h5py.Group):
        return legacy.read_masks(group, net)
    layers = net.masked_layers()
    owners = group["owner"][()]
    if owners.dtype.kind != "u" or owners.ndim != 1 or owners.size != sum(m.owner.numel() for m in layers):
        raise ValueError(f"{group.name}/owner holds {owners.size} {owners.dtype} values, expected one per weight")
    offset = 0
    for m in layers:
        n = m.owner.numel()
        m.owner = torch.from_numpy(owners[offset:offset + n].astype(np.int16)).reshape(m.owner.shape).to(m.owner.device)
        m.invalidate()
        offset += n
    bits, offset = group["piggyback"][()], 0
    for j, i, count in piggyback_index(group):
        if i >= len(layers) or j + 1 not in layers[i].shapes:
            raise ValueError(f"piggyback mask of task {j}, layer {i}: no such task or layer")
        m, tid = layers[i], j + 1
        sel = selectable(m, tid)
        if int(sel.sum()) != count:
            raise ValueError(f"piggyback mask of task {j}, layer {i} does not match the owner tensor")
        part = bits[offset:offset + (count + 7) // 8]
        offset += (count + 7) // 8
        full = torch.zeros(m.weight.shape, dtype=torch.bool)
        out, inp = m.shapes[tid]
        full[:out, :inp][sel] = torch.from_numpy(np.unpackbits(part, count=count).astype(bool))
        m.set_bits(tid, full)
    if offset != bits.size:
        raise ValueError(f"{group.name}/piggyback holds {bits.size} bytes, its index {offset}")
