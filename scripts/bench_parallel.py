"""Wall time of ``cmat bench --jobs N`` against ``--jobs 1`` on the same bench, same machine.

    python scripts/bench_parallel.py                       # digits-5split, at-finetune + packnet, seeds 0,1
    python scripts/bench_parallel.py --epochs 30 --jobs 2 --out runs/parallel --json   # longer runs
    python scripts/bench_parallel.py --render runs/bench-parallel/parallel.json > docs/results/parallel/parallel.md

Runs the bench twice from scratch (``OUT/jobs1``, ``OUT/jobsN``), one after the other, and
reports both wall times, their ratio (N / 1; < 1: the parallel bench is faster) and whether the
two bench.csv files agree apart from their time columns (they must); ``OUT/parallel.json`` keeps
the report, ``--render`` turns one into the markdown table docs/cluster.md shows. The ratio is the number;
absolute seconds depend on the machine. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TIME_COLUMNS = ("train_seconds",)


def table(path: Path) -> list:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]


def bench(args, out: Path, jobs: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cmat", "bench", "--tasks", args.tasks, "--methods", args.methods,
           "--seeds", args.seeds, "--epochs", str(args.epochs), "--attacks", args.attacks, "--out", str(out),
           "--jobs", str(jobs), "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_parallel: the --jobs {jobs} bench failed:\n{proc.stderr[-2000:]}")
    return seconds


def render(report: dict) -> str:
    n = report["jobs"]
    return (f"| bench | cores | --jobs 1 | --jobs {n} | ratio | bench.csv identical |\n|---|---|---|---|---|---|\n"
            f"| {report['tasks']}: {report['methods']} × seeds {report['seeds']}, {report['epochs']} epochs "
            f"| {report['cores']} | {report['jobs1_seconds']:.0f} s | {report[f'jobs{n}_seconds']:.0f} s "
            f"| {report['ratio']:.2f} | {'yes' if report['identical_bench_csv'] else 'NO'} |\n\n"
            f"`python scripts/bench_parallel.py` (commit {report.get('commit', '?')}); ratio = wall time of "
            f"--jobs {n} / --jobs 1, the same bench from scratch, one after the other.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="digits-5split")
    ap.add_argument("--methods", default="at-finetune,packnet")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--attacks", default="clean,pgd10,pgd40")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-parallel")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--render", metavar="JSON", help="print the markdown table of a saved report and exit")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())), end="")
        return
    out = Path(args.out)
    serial = bench(args, out / "jobs1", 1)
    parallel = bench(args, out / f"jobs{args.jobs}", args.jobs)
    same = table(out / "jobs1" / "bench.csv") == table(out / f"jobs{args.jobs}" / "bench.csv")
    report = {"tasks": args.tasks, "methods": args.methods, "seeds": args.seeds, "epochs": args.epochs,
              "attacks": args.attacks, "cores": os.cpu_count(), "jobs": args.jobs, "jobs1_seconds": serial,
              f"jobs{args.jobs}_seconds": parallel, "ratio": parallel / serial, "identical_bench_csv": same,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip()}
    (out / "parallel.json").write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.tasks}, {args.methods} × seeds {args.seeds}, {args.epochs} epochs, {os.cpu_count()} cores: "
              f"--jobs 1 {serial:.0f} s, --jobs {args.jobs} {parallel:.0f} s, ratio {parallel / serial:.2f}; "
              f"bench.csv identical apart from time columns: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
