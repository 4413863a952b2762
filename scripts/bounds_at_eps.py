"""Certified accuracy of every bound at a run's ε on one task, and what each costs.

    python scripts/bounds_at_eps.py RUN_DIR --task J --n N --out DIR [--bounds ibp,crown,alpha-crown,milp]
        [--time-limit S]

One check per image at the run's ε (``cmat verify --at-eps``) with each bound on the same first
N test images; writes ``DIR/bounds.json`` and ``DIR/bounds.md`` (certified count and accuracy,
seconds, MILP's unknown checks). docs/certified.md inlines the table (scripts/readme_tables.py).
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
from cmat.verify import certify_at_eps  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bounds", default="ibp,crown,alpha-crown,milp")
    ap.add_argument("--time-limit", type=float, default=10.0)
    args = ap.parse_args(argv)
    rows = []
    try:
        for bound in [b.strip() for b in args.bounds.split(",") if b.strip()]:
            print(f"[{bound}] certifying {args.n} images of task {args.task + 1} of {args.run_dir} ...", flush=True)
            rows.append(certify_at_eps(args.run_dir, args.task, args.n, bound, args.time_limit))
            print(f"[{bound}] {rows[-1]['certified']}/{rows[-1]['samples']} certified in {rows[-1]['seconds']:.1f} s",
                  flush=True)
    except CmatError as err:
        print(f"bounds_at_eps: error: {err}", file=sys.stderr)
        return 1
    info = {"run": args.run_dir, "task": args.task, "n": args.n, "time_limit": args.time_limit, "rows": rows}
    lines = [f"Bounds at ε = {rows[0]['eps']:.4g} on `{args.run_dir}` task {args.task + 1}, first {args.n} test images "
             f"({rows[0]['correct']} correct clean); one check per image; MILP: HiGHS, {args.time_limit:g} s per "
             "image, an unfinished check counts as not certified.", "",
             "| bound | certified | certified acc. | seconds (all images) | MILP checks unknown |", "|---|---|---|---|---|"]
    for r in rows:
        unknown = str(r["milp_unknown_checks"]) if "milp_unknown_checks" in r else "–"
        lines.append(f"| {r['bound']} | {r['certified']}/{r['samples']} | {r['certified_accuracy']:.3f} | "
                     f"{r['seconds']:.2f} | {unknown} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bounds.json", json.dumps(info, indent=1))
    atomic_write_text(out / "bounds.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
