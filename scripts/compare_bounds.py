"""How tight and how fast each bound is on one task of a finished run.

    python scripts/compare_bounds.py RUN_DIR --task J --n N --out DIR [--bounds ibp,crown,alpha-crown]
        [--max-neurons M] [--time-limit S] [--at-eps]

Runs ``cmat verify`` with every bound on the same first N test images and writes
``DIR/bounds.json`` and ``DIR/bounds.md``: per bound the median certified ε, the median attack
ε (PGD upper end, the same for every bound), their ratio, certified accuracy at the run's ε and
samples per second. README's table is this file (``scripts/readme_tables.py`` inlines it).

``--at-eps``: one check per image at the run's ε instead of the bisection (``cmat verify
--at-eps``): per bound the certified count and accuracy, the seconds and MILP's unknown checks
(docs/certified.md's table on the certified network).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmat.atomic import atomic_write_text  # noqa: E402
from cmat.errors import CmatError  # noqa: E402
from cmat.verify import certify_at_eps, verify_run  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bounds", default="ibp,crown,alpha-crown")
    ap.add_argument("--max-neurons", type=int, default=None)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--at-eps", action="store_true", help="one check per image at the run's ε (no bisection)")
    args = ap.parse_args(argv)
    if args.at_eps:
        return at_eps_table(args)
    out = Path(args.out)
    rows = []
    try:
        for bound in [b.strip() for b in args.bounds.split(",") if b.strip()]:
            print(f"[{bound}] verifying {args.n} images of task {args.task} of {args.run_dir} ...", flush=True)
            s = verify_run(args.run_dir, args.task, args.n, bound, out=out / bound, iters=args.iters,
                           time_limit=args.time_limit, max_neurons=args.max_neurons if bound != "ibp" else None)
            s["ratio"] = s["median_certified_eps"] / s["median_attack_eps"] if s["median_attack_eps"] else None
            rows.append(s)
            print(f"[{bound}] median certified ε {s['median_certified_eps']:.4g}, attack ε "
                  f"{s['median_attack_eps']:.4g}, certified accuracy {s['certified_accuracy']:.3f}, "
                  f"{s['samples_per_second']:.3g} samples/s", flush=True)
    except CmatError as err:
        print(f"compare_bounds: error: {err}", file=sys.stderr)
        return 1
    info = {"run": args.run_dir, "task": args.task, "n": args.n, "max_neurons": args.max_neurons,
            "iters": args.iters, "rows": rows}
    lines = [f"Bounds on `{args.run_dir}` task {args.task + 1}, first {args.n} test images "
             f"({rows[0]['correct'] if rows else 0} correct), ε = {rows[0]['eps'] if rows else 0:.4g}, "
             f"{args.iters} bisection steps; attack ε = PGD upper end (the same for every bound).", "",
             "| bound | median certified ε | median attack ε | certified / attack | certified acc. at ε | "
             "samples/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(f"| {r['bound']} | {r['median_certified_eps']:.4g} | {r['median_attack_eps']:.4g} | {ratio} | "
                     f"{r['certified_accuracy']:.3f} | {r['samples_per_second']:.3g} |")
    write_tables(out, info, lines)
    return 0


def at_eps_table(args) -> int:
    rows = []
    try:
        for bound in [b.strip() for b in args.bounds.split(",") if b.strip()]:
            print(f"[{bound}] certifying {args.n} images of task {args.task + 1} of {args.run_dir} ...", flush=True)
            rows.append(certify_at_eps(args.run_dir, args.task, args.n, bound, args.time_limit,
                                       args.max_neurons if bound != "ibp" else None))
            print(f"[{bound}] {rows[-1]['certified']}/{rows[-1]['samples']} certified in {rows[-1]['seconds']:.1f} s",
                  flush=True)
    except CmatError as err:
        print(f"compare_bounds: error: {err}", file=sys.stderr)
        return 1
    info = {"run": args.run_dir, "task": args.task, "n": args.n, "time_limit": args.time_limit, "rows": rows}
    lines = [f"Bounds at ε = {rows[0]['eps']:.4g} on `{args.run_dir}` task {args.task + 1}, first {args.n} test images "
             f"({rows[0]['correct']} correct clean); one check per image; MILP: HiGHS, {args.time_limit:g} s per "
             "image, an unfinished check counts as not certified.", "",
             "| bound | certified | certified acc. | seconds (all images) | MILP checks unknown |",
             "|---|---|---|---|---|"]
    for r in rows:
        unknown = str(r["milp_unknown_checks"]) if "milp_unknown_checks" in r else "–"
        lines.append(f"| {r['bound']} | {r['certified']}/{r['samples']} | {r['certified_accuracy']:.3f} | "
                     f"{r['seconds']:.2f} | {unknown} |")
    write_tables(Path(args.out), info, lines)
    return 0


def write_tables(out: Path, info: dict, lines: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bounds.json", json.dumps(info, indent=1))
    atomic_write_text(out / "bounds.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
