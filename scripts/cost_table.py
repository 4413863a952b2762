"""Estimated and measured cost per preset: the table README shows (``docs/results/cost/``).

    python scripts/cost_table.py --runs "digits CMAT s0 (bench)=runs/cost/compute/cmat-s0" \\
        "digits at-individual s0=runs/cost/compute/at-individual-s0" \\
        "cifar100-20split rehearsal=runs/cost/rehearsal/run" --out docs/results/cost

1. **Measured runs** (``--runs``): each run's ``results.json`` holds the estimate printed before
   it trained (``cost.estimate``) beside what it measured (``cost.grad_evals``, the per-task
   step, validation and evaluation seconds); the table puts them side by side.
2. **Every preset's full job, estimated** (``--presets``, default all with CMAT): what
   ``cmat run --tasks P --estimate-only`` prints on this machine -- a few timed training steps of
   the preset's objective on its (masked) network, times the CMAT schedule. Presets whose
   datasets are not on this machine are estimated on format-exact synthetic files of the real
   sizes (the estimate depends on image counts and shapes only). The training passes are
   device-independent: on a GPU, ``passes × (your seconds per pass)`` extrapolates, and
   ``--estimate-only`` on that GPU measures the seconds per pass.

Writes ``cost.json`` (everything), ``cost.md`` (the two tables) and copies each measured run's
``results.json`` to ``OUT/runs/<name>.json`` so the table can be regenerated from the repository.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYNTHETIC = {  # dataset files the estimate can run on when the real ones are absent: (writer, sizes)
    "cifar10": ("write_cifar10", {"per_class_train": 5000, "per_class_test": 1000}),
    "cifar100": ("write_cifar100", {"per_class_train": 500, "per_class_test": 100}),
}


def fmt_s(s: float) -> str:
    if s >= 7200:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def measured_row(name: str, res: dict) -> dict:
    c, e = res["cost"], res["cost"]["estimate"]
    per = c.get("per_task", [])
    steps = sum(p["step_seconds"] * p["steps"] for p in per)
    val = sum(p["val_seconds"] for p in per)
    return {"run": name, "method": res["method"], "tasks": res["tasks"], "n_tasks": len(res["task_names"]),
            "passes_est": e["train_passes"], "passes_est_max": e["train_passes_max"], "passes": c["grad_evals"],
            "train_est_s": e["train_seconds"], "train_s": steps, "val_est_s": e["val_seconds"], "val_s": val,
            "eval_est_s": e["eval_seconds"], "eval_s": c["eval_seconds"], "total_est_s": e["total_seconds"],
            "wall_s": c["wall_seconds"], "ms_per_pass_est": e["pass_seconds"] * 1e3,
            "ms_per_pass": steps / max(c["grad_evals"], 1) * 1e3}


def preset_estimate(preset: str, method: str, synthetic_root) -> dict:
    """``synthetic_root()``: a folder of synthetic dataset files of the real sizes (made once)."""
    from cmat.config import resolve
    from cmat.engine import Run
    from cmat.errors import CmatError

    cfg = resolve(preset, overrides={"method": method})
    try:
        est = Run(cfg, ".", progress=False, verbose=False).estimate_only()
        synthetic = False
    except CmatError:  # the dataset is not on this machine: the same sizes, synthetic files
        cfg.data_root = synthetic_root()
        est = Run(cfg, ".", progress=False, verbose=False).estimate_only()
        synthetic = True
    return {"preset": preset, "method": method, "arch": f"{cfg.model.arch} ×{cfg.model.width:g}",
            "objective": f"{cfg.objective.name}-{cfg.objective.steps}", "epochs": cfg.train.epochs,
            "n_tasks": len(est["tasks"]), "synthetic_data": synthetic, **{k: v for k, v in est.items() if k != "tasks"}}


def to_markdown(measured: list, presets: list, machine: str) -> str:
    out = [f"Measured on {machine}. **Runs** (estimate printed before training → measured):\n",
           "| run | tasks | training passes est. → measured | training est. → measured | validation | "
           "evaluation | total est. → wall | ms/pass est. → measured |", "|---|---|---|---|---|---|---|---|"]
    for r in measured:
        out.append(f"| {r['run']} ({r['method']}) | {r['tasks']} ×{r['n_tasks']} | {r['passes_est']:,.0f} "
                   f"(≤ {r['passes_est_max']:,.0f}) → {r['passes']:,} | "
                   f"{fmt_s(r['train_est_s'])} → {fmt_s(r['train_s'])} | "
                   f"{fmt_s(r['val_est_s'])} → {fmt_s(r['val_s'])} | "
                   f"≤ {fmt_s(r['eval_est_s'])} → {fmt_s(r['eval_s'])} | "
                   f"{fmt_s(r['total_est_s'])} → {fmt_s(r['wall_s'])} | "
                   f"{r['ms_per_pass_est']:.3g} → {r['ms_per_pass']:.3g} |")
    out += ["", "**Full jobs, estimated** (`cmat run --tasks P --estimate-only`; training passes are the same on "
            "any device, so on a GPU: time ≈ passes × its seconds per pass, which `--estimate-only` measures "
            "there):\n",
            "| preset | method | network | objective | epochs | tasks | "
            "training passes (≤ if every growth step runs) | ms per pass here | training here | "
            "validation + evaluation here | total here |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in presets:
        star = "¹" if p["synthetic_data"] else ""
        out.append(f"| `{p['preset']}`{star} | {p['method']} | {p['arch']} | {p['objective']} | {p['epochs']} | "
                   f"{p['n_tasks']} | {p['train_passes']:.3g} (≤ {p['train_passes_max']:.3g}) | "
                   f"{p['pass_seconds'] * 1e3:.3g} | {fmt_s(p['train_seconds'])} | "
                   f"{fmt_s(p['val_seconds'] + p['eval_seconds'])} | {fmt_s(p['total_seconds'])} |")
    if any(p["synthetic_data"] for p in presets):
        out.append("\n¹ dataset not on this machine: estimated on format-exact synthetic files of the real sizes.")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", default=[], help="finished run directories, each as LABEL=DIR or DIR")
    ap.add_argument("--presets", nargs="*", default=["toy-2task", "digits-5split", "cifar10-5split",
                                                     "cifar100-10split", "cifar100-20split"])
    ap.add_argument("--method", default="cmat")
    ap.add_argument("--machine", default="2 CPU cores (AMD EPYC), no GPU")
    ap.add_argument("--out", type=Path, default=Path("docs/results/cost"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.runs:  # a new set of measured runs replaces the copied ones
        shutil.rmtree(args.out / "runs", ignore_errors=True)
    (args.out / "runs").mkdir(exist_ok=True)
    measured = []
    labels_path = args.out / "runs" / "labels.json"
    if args.runs:
        labels = {}
        for i, spec in enumerate(args.runs):
            label, _, path = spec.rpartition("=")
            d = Path(path)
            labels[f"{i:02d}.json"] = label or d.name
            shutil.copyfile(d / "results.json", args.out / "runs" / f"{i:02d}.json")
        labels_path.write_text(json.dumps(labels, indent=1))
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else {}
    for name, label in sorted(labels.items()):
        measured.append(measured_row(label, json.loads((args.out / "runs" / name).read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        made = []

        def synthetic_root():
            if not made:
                from tests import fakedata

                for writer, sizes in SYNTHETIC.values():
                    getattr(fakedata, writer)(tmp, **sizes)
                made.append(tmp)
            return tmp

        presets = [preset_estimate(p, args.method, synthetic_root) for p in args.presets]
    (args.out / "cost.json").write_text(json.dumps({"measured": measured, "presets": presets}, indent=1))
    (args.out / "cost.md").write_text(to_markdown(measured, presets, args.machine))
    print((args.out / "cost.md").read_text())


if __name__ == "__main__":
    main()
