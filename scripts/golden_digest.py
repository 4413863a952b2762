"""A digest of what a run computed, to compare code versions bit for bit.

    python scripts/golden_digest.py RUN_DIR [--verify-json FILE --verify-csv FILE] > digest.json

The digest holds the numbers of ``results.json`` that do not measure time (accuracy matrices,
F1, summaries, decisions, attack parameters, evaluated images, parameter count) and the SHA-256
of every dataset in ``store.h5`` (weights, masks, BN statistics) and ``eval.h5`` (per-image
outcomes); with ``cmat verify --json`` output and its CSV, their non-timing fields. It reads files
only (h5py), so it runs the same against any version of cmat. tests/test_goldens.py compares a
fresh run with the digest committed in tests/goldens/.
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


def run_digest(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    return {"results": {k: res[k] for k in RESULT_KEYS if k in res},
            "params_total": res["cost"]["params_total"],
            "store": datasets(run_dir / "store.h5"), "eval": datasets(run_dir / "eval.h5")}


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
