"""What the 2-core recipe gives up: one task, one seed, the preset's recipe against variants.

    python scripts/recipe_ablation.py --tasks mnist-5split --task 2 --out runs/ablation \
        --md docs/results/mnist-ablation/ablation.md [--variants pgd40,epochs30,cnn]

Each variant is an ``at-individual`` run of the first ``--task`` tasks (at-individual trains every
task on its own, so task ``--task`` is trained exactly as in a full run) with one change to the
preset; every run evaluates the whole test set with the preset's attacks. The table compares
each variant's per-image ``worst`` on task ``--task`` with the preset's on the same images:
exact McNemar (two-sided), training seconds and passes. Finished runs are reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmat.metrics import mcnemar_exact, wilson_interval  # noqa: E402
from cmat.outcomes import read_outcomes  # noqa: E402

# name -> (what it changes, extra `cmat run` arguments)
VARIANTS = {
    "preset": ("the preset's recipe", []),
    "pgd40": ("PGD-40 training, α 0.01 (Madry's attack)", ["--set", "objective.steps=40", "--alpha", "0.01"]),
    "epochs30": ("30 epochs instead of 10", ["--epochs", "30"]),
    "cnn": ("cnn-ibp (a CNN, 5.4M MACs vs the mlp's 0.27M)", ["--arch", "cnn-ibp"]),
    "noramp": ("no ε ramp (full ball from the first step)", ["--set", "objective.eps_ramp=0"]),
}


def run_variant(name: str, args) -> Path:
    out = args.out / name
    if (out / "results.json").exists():
        return out
    cmd = ["cmat", "run", "--tasks", args.tasks, "--method", "at-individual", "--max-tasks", str(args.task),
           "--seed", str(args.seed), "--out", str(out), "--no-progress", "--force", *VARIANTS[name][1]]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def row(name: str, out: Path, base: Path, task: int) -> str:
    res = json.loads((out / "results.json").read_text())
    mine = read_outcomes(out / "eval.h5")["correct"]["worst"][task]
    ref = read_outcomes(base / "eval.h5")["correct"]["worst"][task]
    lo, hi = wilson_interval(int(mine.sum()), len(mine))
    clean = res["acc"]["clean"][-1][task]
    cost = res["cost"]
    if name == "preset":
        test = "—"
    else:
        t = mcnemar_exact(mine, ref)
        test = f"{(mine.mean() - ref.mean()):+.3f} ({t['a_only']}/{t['b_only']}, p {t['p']:.2g})"
    return (f"| {name} | {VARIANTS[name][0]} | {len(mine)} | {clean:.3f} | {mine.mean():.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{test} | {cost['train_seconds'] / 60:.1f} | {cost.get('grad_evals', 0) / 1e6:.1f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="mnist-5split")
    ap.add_argument("--task", type=int, default=2, help="1-based task to compare (runs train tasks 1..N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="pgd40,epochs30,noramp", help=f"comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--md", type=Path, default=None, help="write the table here")
    args = ap.parse_args(argv)
    names = ["preset"] + [v for v in args.variants.split(",") if v and v != "preset"]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"recipe_ablation: unknown variant(s) {', '.join(unknown)} (valid: {', '.join(VARIANTS)})")
    outs = {n: run_variant(n, args) for n in names}
    t = args.task - 1
    task_name = json.loads((outs["preset"] / "results.json").read_text())["task_names"][t]
    lines = [f"**Recipe ablation on {args.tasks}, task {args.task} ({task_name}), at-individual, seed {args.seed}** "
             f"(`python scripts/recipe_ablation.py --tasks {args.tasks} --task {args.task} --variants "
             f"{','.join(names[1:])}`; whole test set of the task; `worst` = correct clean and under every attack of "
             f"the preset's evaluation; Δ = variant − preset on the same images, (variant-only/preset-only "
             f"images, exact McNemar p); train min and passes (millions of image forward+backward) are for all "
             f"{args.task} tasks of the run, on this machine with the other runs of the session sharing its 2 cores)",
             "", "| variant | change | n | clean | worst [95% CI] | Δ worst vs preset | train min | passes (M) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [row(n, outs[n], outs["preset"], t) for n in names]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)


if __name__ == "__main__":
    main()
