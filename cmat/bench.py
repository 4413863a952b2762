"""``cmat bench``: several methods, one configuration, one harness, the same seeds.

Each (method, seed) runs into ``OUT/<method>-s<seed>/`` (a finished run with the same
configuration is reused), then ``bench.csv`` (one row per method) and ``bench.md`` (mean ± std
over seeds) are written and the table is returned for printing. Every method name is checked
before anything trains.
"""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import yaml

from cmat import config as config_mod
from cmat.engine import Run, atomic_write_text
from cmat.errors import CmatError
from cmat.methods import method_class

COLUMNS = ("clean", "fgsm", "pgd10", "pgd40")


def _reusable(run_dir: Path, cfg) -> bool:
    if not (run_dir / "results.json").exists() or not (run_dir / "config.yaml").exists():
        return False
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    return stored == yaml.safe_load(config_mod.to_yaml(cfg))


def run_bench(base_cfg, methods, seeds, out, progress=True, verbose=True) -> dict:
    """Run (or reuse) every method × seed; write and return the aggregated table."""
    for m in methods:
        method_class(m)  # unknown names fail here, before any training
    if not methods:
        raise CmatError("--methods is empty")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_method = {}
    for m in methods:
        runs = []
        for seed in seeds:
            cfg = copy.deepcopy(base_cfg)
            cfg.method, cfg.seed = m, int(seed)
            run_dir = out / f"{m}-s{seed}"
            if _reusable(run_dir, cfg):
                runs.append(json.loads((run_dir / "results.json").read_text()))
                continue
            for name in ("results.json", "store.h5", "checkpoint.h5"):
                (run_dir / name).unlink(missing_ok=True)
            runs.append(Run(cfg, run_dir, progress=progress, verbose=verbose).execute())
        per_method[m] = runs
    rows = [aggregate(m, runs) for m, runs in per_method.items()]
    atomic_write_text(out / "bench.csv", to_csv(rows))
    atomic_write_text(out / "bench.md", to_markdown(rows, base_cfg, seeds))
    atomic_write_text(out / "bench.json", json.dumps({"tasks": base_cfg.tasks, "seeds": list(seeds), "rows": rows}, indent=1))
    return {"rows": rows, "markdown": to_markdown(rows, base_cfg, seeds)}


def aggregate(method: str, runs: list) -> dict:
    """Mean and std over seeds of the average accuracies, macro-F1, BWT, forgetting, cost."""
    row = {"method": method, "seeds": len(runs)}
    for name in COLUMNS:
        vals = [r["summary"][name]["acc"] for r in runs if name in r["summary"]]
        row[name] = float(np.mean(vals)) if vals else float("nan")
        row[f"{name}_std"] = float(np.std(vals)) if vals else float("nan")
    row["f1_clean"] = float(np.mean([np.mean(r["f1"]["clean"]) for r in runs]))
    row["f1_pgd10"] = float(np.mean([np.mean(r["f1"]["pgd10"]) for r in runs if "pgd10" in r["f1"]] or [np.nan]))
    for key in ("bwt", "forgetting"):
        row[key] = float(np.mean([r["summary"]["clean"][key] for r in runs]))
        if all("pgd10" in r["summary"] for r in runs):
            row[f"{key}_pgd10"] = float(np.mean([r["summary"]["pgd10"][key] for r in runs]))
    row["params"] = int(np.mean([r["cost"]["params_total"] for r in runs]))
    row["store_bytes"] = int(np.mean([r["cost"]["store_bytes"] for r in runs]))
    row["train_seconds"] = float(np.mean([r["cost"]["train_seconds"] for r in runs]))
    return row


def to_csv(rows: list) -> str:
    keys = ["method", *COLUMNS] + [k for k in rows[0] if k not in ("method", *COLUMNS)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in keys})
    return buf.getvalue()


def to_markdown(rows: list, cfg, seeds) -> str:
    head = (f"# cmat bench: {cfg.tasks}, objective {cfg.objective.name}, ε = {cfg.threat.eps:.4g}, "
            f"α = {cfg.threat.alpha:.4g}, seeds {','.join(map(str, seeds))}\n\n"
            "Average accuracy over tasks after the last task (mean ± std over seeds); F1 = macro-F1 "
            "(clean); BWT and forgetting on clean accuracy.\n\n")
    cols = ["method", "clean", "FGSM", "PGD-10", "PGD-40", "F1", "BWT", "forgetting", "params", "store MB", "train s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["method"]] + [f"{r[c]:.4f} ± {r[c + '_std']:.4f}" for c in COLUMNS]
        cells += [f"{r['f1_clean']:.4f}", f"{r['bwt']:+.4f}", f"{r['forgetting']:.4f}", f"{r['params']:,}",
                  f"{r['store_bytes'] / 1e6:.2f}", f"{r['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
