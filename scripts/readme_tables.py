"""Regenerate the tables in README.md (and any Markdown file) from result files.

    python scripts/readme_tables.py [README.md ...]

Every block between ``<!-- cmat-summary DIR -->`` and ``<!-- /cmat-summary -->`` is replaced by a
bench's one-line-per-method summary (:mod:`cmat.summary`), every block between
``<!-- cmat-report DIR -->`` and ``<!-- /cmat-report -->`` is replaced by
``cmat report DIR`` (a run or bench directory, relative to the repository root), and every
block between ``<!-- cmat-presets -->`` and ``<!-- /cmat-presets -->`` by the table of the
hyper-parameters each preset sets, and every block between ``<!-- cmat-file PATH -->`` and
``<!-- /cmat-file -->`` by the Markdown file PATH that a command wrote (e.g.
``scripts/compare_bounds.py``), and every block between ``<!-- cmat-cli TABLE -->`` and
``<!-- /cmat-cli -->`` by a table read from the registries (``cmat.cli.names.cli_table``: the
names each CLI flag takes, the task sequences), and every block between ``<!-- cmat-criteria DIR -->``
and ``<!-- /cmat-criteria -->`` by the criteria table of the ``criteria-*.json`` in DIR
(``cmat.verify.criteria_markdown``). Numbers in README are therefore never typed by hand.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmat.cli.names import cli_table  # noqa: E402
from cmat.config import preset_names, resolve  # noqa: E402
from cmat.report import render_report  # noqa: E402
from cmat.summary import summary_markdown  # noqa: E402
from cmat.verify import criteria_markdown  # noqa: E402

BLOCK = re.compile(r"(<!-- cmat-report (?P<dir>\S+) -->\n)(?P<body>.*?)(<!-- /cmat-report -->)", re.S)
FILE = re.compile(r"(<!-- cmat-file (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /cmat-file -->)", re.S)
PRESETS = re.compile(r"(<!-- cmat-presets -->\n)(?P<body>.*?)(<!-- /cmat-presets -->)", re.S)
SUMMARY = re.compile(r"(<!-- cmat-summary (?P<dir>\S+) -->\n)(?P<body>.*?)(<!-- /cmat-summary -->)", re.S)
CRITERIA = re.compile(r"(<!-- cmat-criteria (?P<dir>\S+) -->\n)(?P<body>.*?)(<!-- /cmat-criteria -->)", re.S)
CLI = re.compile(r"(<!-- cmat-cli (?P<table>\S+) -->\n)(?P<body>.*?)(<!-- /cmat-cli -->)", re.S)


def presets_table() -> str:
    cols = ["preset", "arch", "ε", "train α", "objective steps", "epochs", "batch", "lr", "val. fraction",
            "CMAT options", "evaluation"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name in preset_names():
        c = resolve(name)
        ev = ", ".join(c.eval.attacks) + (f" on {c.eval.samples} images/task" if c.eval.samples else "")
        opts = ", ".join(f"{k} {v}" for k, v in c.method_options.items() if k != "goal") or "defaults"
        lines.append(f"| `{name}` | {c.model.arch} ×{c.model.width:g} | {c.threat.eps:.4g} | {c.threat.alpha:.4g} | "
                     f"{c.objective.steps} | {c.train.epochs} | {c.train.batch_size} | {c.train.lr:g} | "
                     f"{c.train.val_fraction:g} | {opts} | {ev} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    text = BLOCK.sub(lambda m: m.group(1) + render_report(ROOT / m.group("dir")) + m.group(4), text)
    text = SUMMARY.sub(lambda m: m.group(1) + summary_markdown(ROOT / m.group("dir")) + m.group(4), text)
    text = FILE.sub(lambda m: m.group(1) + (ROOT / m.group("path")).read_text(encoding="utf-8") + m.group(4), text)
    text = CLI.sub(lambda m: m.group(1) + cli_table(m.group("table")) + m.group(4), text)
    text = CRITERIA.sub(lambda m: m.group(1) + criteria_markdown(ROOT / m.group("dir")) + m.group(4), text)
    return PRESETS.sub(lambda m: m.group(1) + presets_table() + m.group(3), text)


def main(argv) -> None:
    ap = argparse.ArgumentParser(description="Regenerate the generated blocks of Markdown files from result files.")
    ap.add_argument("paths", nargs="*", type=Path, help="Markdown files (default: README.md)")
    paths = ap.parse_args(argv).paths
    for p in paths or [ROOT / "README.md"]:
        if not p.is_file():
            ap.error(f"no such Markdown file: {p}")
        new = render(p.read_text(encoding="utf-8"))
        p.write_text(new, encoding="utf-8")
        print(f"regenerated the tables in {p}")


if __name__ == "__main__":
    main(sys.argv[1:])
