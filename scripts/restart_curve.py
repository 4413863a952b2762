"""Does a run's robust number converge? Restart APGD-CE on the images its ``worst`` kept.

    python scripts/restart_curve.py RUN_DIR [--task J ...] [--restarts 12] [--steps 100] [--json]

For each task, the images the run counted robust (``worst`` in ``eval.h5``, over every saved
evaluation given with ``--with``) are attacked by torchattacks' APGD-CE again and again, each
restart with its own seed; the curve is how many are still unbroken after each restart (the
per-image worst over the restarts). A converged robust number loses a handful at the first
restart and then nothing; a curve that keeps falling says the run's attacks, and any fixed
number of restarts, overestimate robustness on that network. Also printed: the median logit
margin of those images (true class minus the best other), which is where a falling curve
usually comes from — logits nearly tied across the whole ε-ball.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cmat  # noqa: E402
from cmat.outcomes import read_outcomes, worst_over  # noqa: E402
from cmat.tasks import tasks_for_config  # noqa: E402


def curve(model, x, y, eps: float, restarts: int, steps: int, seed: int) -> list:
    """Robust images left after each APGD-CE restart (the first entry: before any)."""
    import torchattacks

    alive = torch.ones(len(y), dtype=torch.bool)
    left = [int(alive.sum())]
    for r in range(restarts):
        if alive.any():
            atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed + r)
            with torch.random.fork_rng():
                x_adv = atk(x[alive], y[alive])
            with torch.no_grad():
                alive[alive.clone()] = model(x_adv).argmax(1) == y[alive]
        left.append(int(alive.sum()))
    return left


def main(argv) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--task", type=int, action="append", help="task index (default: every task)")
    ap.add_argument("--restarts", type=int, default=12)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--with", dest="extra", action="append", default=[], help="another saved evaluation in RUN")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    run = cmat.load(args.run)
    cfg = run.config
    outcomes = read_outcomes(args.run / "eval.h5")
    _, worsts = worst_over(args.run, ("eval.h5", *args.extra))
    seq = tasks_for_config(cfg, download=False)
    rows = []
    for j in args.task if args.task else range(len(run.task_names)):
        model = run.model(j).eval()
        keep = torch.from_numpy(worsts[j])
        x, y = seq[j].test.tensors(torch.from_numpy(outcomes["indices"][j]))
        x, y = x[keep], y[keep]
        with torch.no_grad():
            logits = model(x)
        margin = logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], float("-inf")).max(1).values
        rows.append({"task": run.task_names[j], "n": int(len(outcomes["indices"][j])),
                     "median_margin": float(margin.median()) if len(y) else None,
                     "robust_after_restarts": curve(model, x, y, cfg.threat.eps, args.restarts, args.steps,
                                                    args.seed)})
        if not args.json:
            r = rows[-1]
            margin = "–" if r["median_margin"] is None else f"{r['median_margin']:.4g}"
            print(f"{r['task']}: n {r['n']}, median logit margin {margin}, robust after 0..{args.restarts} "
                  f"restarts: {' '.join(map(str, r['robust_after_restarts']))}", flush=True)
    if args.json:
        print(json.dumps({"run": str(args.run), "eps": cfg.threat.eps, "steps": args.steps, "seed": args.seed,
                          "with": args.extra, "tasks": rows}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
