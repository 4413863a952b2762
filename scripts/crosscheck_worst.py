"""Attack a finished run's saved models with an independent tool and compare with its `worst`.

    python scripts/crosscheck_worst.py RUN_DIR [--steps 100] [--restarts 1] [--seed 12345] [--json]
        [--with eval-all.h5]

For every task, torchattacks' APGD-CE (``--steps`` steps, its own seed, through the unfolded
model loaded from ``store.h5``) attacks exactly the images the run evaluated (``eval.h5``), and
the script counts the images the run reported robust (``worst``) that APGD-CE breaks, and, when
the run evaluated ``certified``, the images counted certified that it breaks (must be none). A sound
`worst` column leaves at most a handful of such images (an independent random restart can
always find one the run's attacks missed); the acceptance rule of the evaluation issue is at
most one image per task. ``--with FILE`` also counts as broken what a later ``cmat eval RUN
--save`` (``FILE`` in the run, e.g. ``eval-all.h5``) broke on the same images: the per-image worst
over both evaluations.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cmat  # noqa: E402
from cmat.outcomes import read_outcomes, worst_over  # noqa: E402
from cmat.tasks import tasks_for_config  # noqa: E402


def crosscheck(run_dir: Path, steps: int, restarts: int, seed: int, extra=()) -> dict:
    import torchattacks

    run = cmat.load(run_dir)
    cfg = run.config
    outcomes = read_outcomes(run_dir / "eval.h5")
    _, worsts = worst_over(run_dir, ("eval.h5", *extra))  # the per-image worst over every saved evaluation
    seq = tasks_for_config(cfg, download=False)
    rows = []
    for j, name in enumerate(run.task_names):
        model = run.model(j).eval()
        idx = torch.from_numpy(outcomes["indices"][j])
        x, y = seq[j].test.tensors(idx)
        atk = torchattacks.APGD(model, norm="Linf", eps=cfg.threat.eps, steps=steps, n_restarts=restarts,
                                loss="ce", seed=seed)
        with torch.random.fork_rng():
            x_adv = atk(x, y)
        with torch.no_grad():
            survived = ((model(x_adv).argmax(1) == y) & (model(x).argmax(1) == y)).numpy()
        worst = worsts[j]
        missed = int((worst & ~survived).sum())
        row = {"task": name, "n": int(len(y)), "worst": int(worst.sum()), "apgd_ce": int(survived.sum()),
               "robust_in_worst_broken_by_apgd": missed}
        if "certified" in outcomes["correct"]:  # a proof an attack refutes is a bug: must be 0
            cert = outcomes["correct"]["certified"][j]
            row.update(certified=int(cert.sum()), certified_broken_by_apgd=int((cert & ~survived).sum()))
        rows.append(row)
    return {"run": str(run_dir), "eps": cfg.threat.eps, "steps": steps, "restarts": restarts, "seed": seed,
            "with": list(extra),
            "tasks": rows, "max_missed_per_task": max(r["robust_in_worst_broken_by_apgd"] for r in rows),
            "certified_broken": sum(r.get("certified_broken_by_apgd", 0) for r in rows),
            "worst_acc": float(np.mean([r["worst"] / r["n"] for r in rows])),
            "apgd_ce_acc": float(np.mean([r["apgd_ce"] / r["n"] for r in rows]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--with", dest="extra", action="append", default=[],
                        help="another saved evaluation in the run (e.g. eval-all.h5) whose worst also counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = crosscheck(args.run_dir, args.steps, args.restarts, args.seed, args.extra)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['run']}: APGD-CE {args.steps} steps × {args.restarts} restarts (torchattacks, seed {args.seed}) "
          f"at ε = {report['eps']:.4g}")
    print(f"{'task':<16}{'n':>5}{'worst':>8}{'APGD-CE':>9}{'worst-robust but broken':>26}")
    for r in report["tasks"]:
        print(f"{r['task']:<16}{r['n']:>5}{r['worst']:>8}{r['apgd_ce']:>9}{r['robust_in_worst_broken_by_apgd']:>26}")
    print(f"mean accuracy: worst {report['worst_acc']:.4f}, APGD-CE {report['apgd_ce_acc']:.4f}; "
          f"at most {report['max_missed_per_task']} image(s) per task that worst called robust were broken")
    if any("certified" in r for r in report["tasks"]):
        print(f"certified: {sum(r['certified'] for r in report['tasks'])} images counted certified, "
              f"{report['certified_broken']} of them broken by APGD-CE (must be 0)")


if __name__ == "__main__":
    main()
