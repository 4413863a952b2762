"""The front-page summary of a bench: one line per method, from its result files.

``<!-- cmat-summary DIR -->`` blocks (``scripts/readme_tables.py``) render it. Per method: the
parameters, clean and ``worst`` accuracy (mean ± sample SD over seeds of the task averages,
:func:`cmat.bench.aggregate`), ``all`` when every run was re-evaluated (``cmat eval RUN --save``:
the per-image worst over the run's attacks and the re-evaluation's, :mod:`cmat.reeval`), and the
paired test against the reference on the last of those columns (crossed bootstrap over images
× seeds, :func:`cmat.bench.paired_tests`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmat import bench as bench_mod
from cmat.metrics import seed_spread
from cmat.provenance import machine_line
from cmat.report import read_bench
from cmat.rundir import read_results


def _all_accuracy(run_dir: Path):
    """The task-averaged ``all`` accuracy of a re-evaluated run, or None."""
    f = run_dir / "eval-all.json"
    if not f.exists():
        return None
    check = json.loads(f.read_text()).get("check")
    return None if not check else float(np.mean([t["combined_robust"] / t["n"] for t in check["tasks"]]))


def _cell(values) -> str:
    s = seed_spread(values)
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")


def summary_markdown(bench: Path) -> str:
    bench = Path(bench)
    meta, methods, seeds = read_bench(bench)
    runs = {m: [read_results(bench / f"{m}-s{s}" / "results.json") for s in seeds] for m in methods}
    alls = {m: [_all_accuracy(bench / f"{m}-s{s}") for s in seeds] for m in methods}
    reeval = all(a is not None for v in alls.values() for a in v)
    reference = bench_mod.reference_method(methods)
    files = ("eval.h5", "eval-all.h5") if reeval else ("eval.h5",)
    tests = bench_mod.paired_tests(bench, methods, seeds, reference, files=files)
    col = "all" if reeval else "worst"
    head = (["method", "params", "clean", "worst"] + (["all"] if reeval else [])
            + [f"{reference} − method on {col} [95% CI]"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        rs = runs[m]
        cells = [m, _params(meta, m), _cell([r["summary"]["clean"]["acc"] for r in rs]),
                 _cell([r["summary"]["worst"]["acc"] for r in rs])]
        if reeval:
            cells.append(_cell(alls[m]))
        if m == reference:
            cells.append("—")
        else:
            p = tests[m]["images"]
            lo, hi = p["ci95_diff"]
            sig = "significant" if p["p"] < bench_mod.ALPHA else "not significant"
            cells.append(f"{p['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], {sig}")
        lines.append("| " + " | ".join(cells) + " |")
    what = ("`all` = correct clean and under every attack of the run and of its re-evaluation (the number to "
            "quote); " if reeval else "")
    n = runs[methods[0]][0]["summary"]["clean"].get("n")
    machine = machine_line([r.get("provenance", {}) for rs in runs.values() for r in rs])
    return (f"`{meta.get('tasks', '?')}`, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}, "
            f"{f'{n:,}' if n else '?'} test images per seed; accuracy = mean ± sample SD over seeds of the "
            f"task average; `worst` = correct clean and under every attack the run ran; {what}the difference "
            f"is paired (crossed bootstrap over images × seeds, p < {bench_mod.ALPHA}).\n\n"
            + "\n".join(lines) + "\n\n" + machine + "\n")


def _params(meta: dict, method: str) -> str:
    """The method's parameter count as bench.json recorded it."""
    row = next(r for r in meta["rows"] if r["method"] == method)
    return f"{int(float(row.get('params', 0))):,}"
