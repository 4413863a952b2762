"""Tabulate saved crosscheck results (``scripts/crosscheck_worst.py RUN --json > DIR/RUN.json``).

    python scripts/crosscheck_table.py docs/results/mnist-5split/crosscheck docs/results/mnist-5split/crosscheck.md

Per run and task: the images the run's ``worst`` counted robust that torchattacks' APGD-CE broke;
``worst over`` says whether that worst is the run's own evaluation or also a later one
(``crosscheck_worst.py RUN --with eval-all.h5``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def table(folder: Path) -> str:
    files = sorted(folder.glob("*.json"))
    if not files:
        sys.exit(f"crosscheck_table: no *.json in {folder}")
    runs = sorted((json.loads(f.read_text()) for f in files),
                  key=lambda d: (Path(d["run"]).name, len(d.get("with", []))))
    names = [t["task"] for t in runs[0]["tasks"]]
    first = runs[0]
    lines = [f"Images the run's `worst` counted robust that torchattacks APGD-CE ({first['steps']} steps, "
             f"{first['restarts']} restart, seed {first['seed']}, ε {first['eps']:g}) breaks, per task "
             f"(`python scripts/crosscheck_worst.py RUN --json`; rule: at most 1 per task)", "",
             "| run | worst over | " + " | ".join(names) + " | worst | APGD-CE alone | rule |",
             "|---|---|" + "---|" * (len(names) + 3)]
    for d in runs:
        missed = [t["robust_in_worst_broken_by_apgd"] for t in d["tasks"]]
        over = " + ".join(["the run's attacks"] + [Path(w).stem for w in d.get("with", [])])
        lines.append(f"| {Path(d['run']).name} | {over} | " + " | ".join(map(str, missed))
                     + f" | {d['worst_acc']:.4f} | {d['apgd_ce_acc']:.4f} | "
                     + ("holds" if max(missed) <= 1 else "fails") + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: crosscheck_table.py DIR OUT.md")
    Path(sys.argv[2]).write_text(table(Path(sys.argv[1])))
    print(Path(sys.argv[2]).read_text())
