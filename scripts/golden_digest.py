"""A digest of what a run computed, to compare code versions bit for bit.

    python scripts/golden_digest.py RUN_DIR [--verify-json FILE --verify-csv FILE] > digest.json

The digest holds the numbers of ``results.json`` that do not measure time (accuracy matrices,
F1, summaries, decisions, attack parameters, evaluated images, parameter count), the SHA-256 of
every tensor the store API loads from ``store.h5`` by logical name (``store_tensors``: weights,
biases, BN statistics, heads, owner ids, each task's whole piggyback mask; independent of the
file's layout, since ``cmat.load`` reads every store version), the SHA-256 of every dataset of
``eval.h5`` (per-image outcomes), those outcomes themselves (for the cross-CPU rule of
tests/drift.py) and the CPU fingerprint results.json records; with ``cmat verify --json`` output
and its CSV, their non-timing fields. tests/test_goldens.py compares a fresh run with the digest
committed in tests/goldens/.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np

RESULT_KEYS = ("format", "version", "method", "objective", "tasks", "task_names", "threat", "attacks", "eval",
               "acc", "clean_full", "f1", "summary", "decisions", "seed")
VERIFY_TIMING = ("samples_per_second", "csv")


def datasets(path: Path) -> dict:
    """name -> SHA-256 of the dataset's dtype, shape and bytes, for every dataset in the file."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            data = np.asarray(obj[()])
            h = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
            h.update(np.ascontiguousarray(data).tobytes())
            out[name] = h.hexdigest()

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return dict(sorted(out.items()))


def outcome_bits(path: Path) -> dict:
    """``{column: ["0110…" per task]}``: eval.h5's per-image outcomes, one character an image, so
    a rerun on another CPU can be compared image by image (tests/drift.py)."""
    with h5py.File(path, "r") as f:
        columns, out = json.loads(f.attrs["columns"]), {}
        for j in range(len(json.loads(f.attrs["task_names"]))):
            g = f[f"tasks/{j}"]
            for c in columns:
                bits = np.unpackbits(g[f"correct/{c}"][()], count=int(g.attrs["n"]))
                out.setdefault(c, []).append("".join(map(str, bits.tolist())))
    return out


def _tensor_hash(t) -> str:
    data = t.detach().cpu().contiguous().numpy()
    h = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    h.update(data.tobytes())
    return h.hexdigest()


def store_tensors(path: Path) -> dict:
    """name -> SHA-256 of the dtype, shape and bytes of every tensor ``cmat.load`` restores:
    ``networks/<k>/state/<entry>``, ``networks/<k>/owner/<layer>`` and
    ``networks/<k>/piggyback/<task>/<layer>`` (the whole bool mask over the layer's weight)."""
    import cmat

    out = {}
    for k, net in enumerate(cmat.load(path).networks):
        for name, tensor in net.state_dict().items():
            out[f"networks/{k}/state/{name}"] = _tensor_hash(tensor)
        for i, m in enumerate(net.masked_layers() if net.spec.get("masked") else []):
            out[f"networks/{k}/owner/{i}"] = _tensor_hash(m.owner)
            for tid in sorted(m.bits):
                out[f"networks/{k}/piggyback/{tid - 1}/{i}"] = _tensor_hash(m.mask_bits(tid))
    return dict(sorted(out.items()))


def run_digest(run_dir: Path) -> dict:
    """Also ``cpu``: the fingerprint results.json's provenance records (None before it did)."""
    res = json.loads((run_dir / "results.json").read_text())
    return {"results": {k: res[k] for k in RESULT_KEYS if k in res},
            "params_total": res["cost"]["params_total"],
            "store": store_tensors(run_dir / "store.h5"), "eval": datasets(run_dir / "eval.h5"),
            "outcomes": outcome_bits(run_dir / "eval.h5"), "cpu": res.get("provenance", {}).get("cpu")}


def verify_digest(summary_json: Path, csv_path: Path) -> dict:
    summary = json.loads(summary_json.read_text())
    with open(csv_path, newline="") as fh:
        rows = [{k: v for k, v in r.items() if k not in ("total_time", "network")} for r in csv.DictReader(fh)]
    return {"summary": {k: v for k, v in summary.items() if k not in VERIFY_TIMING}, "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--verify-json", type=Path)
    ap.add_argument("--verify-csv", type=Path)
    args = ap.parse_args(argv)
    out = run_digest(args.run_dir)
    if args.verify_json:
        out["verify_crown"] = verify_digest(args.verify_json, args.verify_csv)
    json.dump(out, sys.stdout, indent=1, allow_nan=True)
    print()


if __name__ == "__main__":
    main()
