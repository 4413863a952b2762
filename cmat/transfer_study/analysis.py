"""The study's analysis and outputs: summary with n, 95% intervals, ratios against scratch
PGD-AT and exact McNemar tests; study.csv/.json/.md, critical_eps.csv and the plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from cmat.atomic import atomic_write_text
from cmat.metrics import mcnemar_exact, wilson_interval
from cmat.plots import plt, transfer_bars_figure, transfer_ecdf_figure, transfer_pareto_figure
from cmat.config import CERTIFIED_OBJECTIVES
from cmat.transfer_study.plan import ACCURACY_COLUMNS, CSV_COLUMNS, Cell, reference_cell
from cmat.verify import COLUMNS


def summarize_study(cfg, seq, source_task, target_task, strategies, cells, records, sources, settings,
                    robust_objective: str = "pgd") -> dict:
    """Rows in plan order with n and 95% intervals, ratios against scratch training with the robust
    objective (the reference), paired tests against it, and the source effect: per strategy and
    target objective, the robust source against the standard one on the same images."""
    rows, extra = [], []
    for c in sorted(cells, key=_display_order(strategies, robust_objective)):
        rec = records[c.name]
        row = dict(rec["row"])
        rows.append(row)
        ci = {}
        for name in ACCURACY_COLUMNS:
            if name in rec["outcomes"]:
                bits = np.asarray(rec["outcomes"][name], dtype=bool)
                ci[name] = list(wilson_interval(int(bits.sum()), len(bits)))
        extra.append({"cell": c.name, "n": rec["n"], "ci95": ci, "trainable_params": rec["trainable_params"],
                      "eval_seconds": rec["eval_seconds"], "verify_seconds": rec["verify_seconds"]})
    reference = reference_cell(robust_objective).name
    ref = records[reference]
    ref_row = ref["row"]
    certified = robust_objective in CERTIFIED_OBJECTIVES
    robust = "certified" if certified else next(c for c in ("worst", "pgd10", "clean") if c in ref_row)
    ratios, tests = {}, {}
    for c in cells:
        rec = records[c.name]
        r = rec["row"]
        ratios[c.name] = {
            "robust": r[robust] / ref_row[robust] if ref_row[robust] > 0 else None,
            "grad_evals": r["grad_evals"] / ref_row["grad_evals"] if ref_row["grad_evals"] else None,
            "seconds": r["train_seconds"] / ref_row["train_seconds"] if ref_row["train_seconds"] > 0 else None}
        if c.name != reference and rec["indices"] == ref["indices"]:
            tests[c.name] = mcnemar_exact(np.asarray(ref["outcomes"][robust], bool),
                                          np.asarray(rec["outcomes"][robust], bool))
    headline = None
    a, b = records.get("pgd-linear-standard"), records.get("standard-linear-standard")
    if a is not None and b is not None and "pgd10" in a["outcomes"] and a["indices"] == b["indices"]:
        headline = {"column": "pgd10", "robust_source": a["row"]["pgd10"], "standard_source": b["row"]["pgd10"],
                    "difference": a["row"]["pgd10"] - b["row"]["pgd10"],
                    "mcnemar": mcnemar_exact(np.asarray(b["outcomes"]["pgd10"], bool),
                                             np.asarray(a["outcomes"]["pgd10"], bool)),
                    "cost_vs_scratch_pgd": ratios["pgd-linear-standard"]["grad_evals"]}
    return {"format": "cmat-transfer-study", "version": 1, "tasks": cfg.tasks,
            "source_task": {"index": source_task, "name": seq[source_task].name},
            "target_task": {"index": target_task, "name": seq[target_task].name},
            "threat": {"eps": cfg.threat.eps, "alpha": cfg.threat.alpha}, "attacks": list(cfg.eval.attacks),
            "epochs": cfg.train.epochs, "seed": cfg.seed, "strategies": strategies, "settings": settings,
            "robust_objective": robust_objective, "reference": reference,
            "robust_column": robust, "rows": rows, "cells": extra, "ratios_vs_reference": ratios,
            "mcnemar_vs_reference": tests, "headline": headline,
            "source_effect": source_effect(records, strategies, robust_objective, robust),
            "sources": {obj: {k: sources[obj]["summary"][k]["acc"] for k in sources[obj]["summary"]}
                        | {"train_seconds": sources[obj]["cost"]["train_seconds"],
                           "grad_evals": sources[obj]["cost"]["grad_evals"]} for obj in sources},
            "critical_eps": {c.name: records[c.name]["critical_eps"] for c in cells}}


def source_effect(records: dict, strategies, robust_objective: str, column: str) -> list:
    """Does the robust source help? Per strategy and target objective: ``column`` over the robust
    source minus over the standard source, on the same images, with the exact McNemar test
    (one image = one pair; the alternative is two-sided)."""
    out = []
    for strategy in strategies:
        for target in ("standard", robust_objective):
            a = records.get(f"{robust_objective}-{strategy}-{target}")
            b = records.get(f"standard-{strategy}-{target}")
            if a is None or b is None or a["indices"] != b["indices"] or column not in a["outcomes"]:
                continue
            out.append({"strategy": strategy, "target_objective": target, "column": column, "n": a["n"],
                        "robust_source": a["row"][column], "standard_source": b["row"][column],
                        "difference": a["row"][column] - b["row"][column],
                        "mcnemar": mcnemar_exact(np.asarray(b["outcomes"][column], bool),
                                                 np.asarray(a["outcomes"][column], bool))})
    return out


def _display_order(strategies, robust_objective: str):
    order = list(strategies) + ["scratch"]

    def key(c: Cell):
        return (order.index(c.strategy), ["standard", robust_objective, "none"].index(c.source),
                c.target != "standard")

    return key


def write_study(out: Path, study: dict) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in study["rows"]:
        w.writerow([r.get(k, "") if not isinstance(r.get(k), float) else f"{r[k]:.6g}" for k in CSV_COLUMNS])
    atomic_write_text(out / "study.csv", buf.getvalue())
    verona = io.StringIO()
    w = csv.writer(verona, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in study["cells"]:
        path = out / "cells" / r["cell"] / "critical_eps.csv"
        w.writerows(list(csv.reader(io.StringIO(path.read_text())))[1:])
    atomic_write_text(out / "critical_eps.csv", verona.getvalue())
    atomic_write_text(out / "study.md", study_markdown(study))
    plot_study(study, out)
    atomic_write_text(out / "study.json", json.dumps(study, indent=1))


def _fmt_ratio(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _fmt_p(test) -> str:
    if test is None:
        return "–"
    return f"{test['p']:.2g}" + (" *" if test["p"] < 0.05 else "")


def reference_of(study: dict) -> tuple:
    """``(label, ratios, tests)`` of the study's reference cell (studies written before the
    reference followed the objective stored them under ``*_vs_scratch_pgd``)."""
    robust_objective = study.get("robust_objective", "pgd")
    if "ratios_vs_reference" in study:
        return f"scratch-{robust_objective}", study["ratios_vs_reference"], study["mcnemar_vs_reference"]
    return "scratch-pgd", study["ratios_vs_scratch_pgd"], study["mcnemar_vs_scratch_pgd"]


def study_markdown(study: dict) -> str:
    """The study table (n and 95% interval of the robust column), ratios and paired tests."""
    rows, cells, robust = study["rows"], study["cells"], study["robust_column"]
    ref, ratios, tests = reference_of(study)
    cols = [c for c in ("clean", "pgd10", "pgd40", "aa", "worst", "certified") if c in rows[0]]
    n = cells[0]["n"]
    lines = [f"Transfer study on `{study['tasks']}`: source task {study['source_task']['name']} → target task "
             f"{study['target_task']['name']}; ε = {study['threat']['eps']:.4g}, {study['epochs']} epochs, seed "
             f"{study['seed']}. Every column on the same n = {n} test images of the target; `{robust}` with its "
             f"95% Wilson interval; `certified` proven by CROWN at ε; passes = forward+backward passes per image "
             f"spent on the target (attack steps and bound passes included); ratios against `{ref}` (scratch "
             f"training with the robust objective).", ""]
    head = (["source", "strategy", "target obj."] + cols + [f"{robust} 95% CI", "train s", "passes",
                                                             f"{robust} / {ref}", f"passes / {ref}",
                                                             f"McNemar p vs {ref}"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r, e in zip(rows, cells):
        lo, hi = e["ci95"].get(robust, (float("nan"), float("nan")))
        rt = ratios[e["cell"]]
        lines.append("| " + " | ".join([r["source_objective"], r["strategy"], r["target_objective"]]
                                       + [f"{r[c]:.3f}" for c in cols]
                                       + [f"[{lo:.3f}, {hi:.3f}]", f"{r['train_seconds']:.0f}", f"{r['grad_evals']:,}",
                                          _fmt_ratio(rt["robust"]), _fmt_ratio(rt["grad_evals"]),
                                          _fmt_p(tests.get(e["cell"]))]) + " |")
    lines += ["", f"McNemar: exact paired test on the per-image `{robust}` outcomes of the same images "
                  f"(* = significant at 0.05; – = the reference itself)."]
    h = study.get("headline")
    if h:
        lines += ["", f"Linear probe with a standard target objective: PGD-10 {h['robust_source']:.3f} over the "
                      f"robust source against {h['standard_source']:.3f} over the standard source "
                      f"(difference {h['difference']:+.3f}, McNemar p = {h['mcnemar']['p']:.2g}), at "
                      f"{_fmt_ratio(h['cost_vs_scratch_pgd'])}× the passes of scratch PGD-AT."]
    effect = study.get("source_effect")
    if effect:
        robust_objective = study["robust_objective"]
        lines += ["", f"Does the {robust_objective} source help? `{robust}` over the {robust_objective} source minus "
                      f"over the standard source, same strategy and target objective, same n = {n} images "
                      f"(exact two-sided McNemar on the discordant images; * = significant at 0.05):", "",
                  f"| strategy | target obj. | {robust_objective} source | standard source | difference | "
                  f"discordant (robust only / standard only) | McNemar p |", "|---|---|---|---|---|---|---|"]
        for e in effect:
            m = e["mcnemar"]
            lines.append(f"| {e['strategy']} | {e['target_objective']} | {e['robust_source']:.3f} | "
                         f"{e['standard_source']:.3f} | {e['difference']:+.3f} | {m['b_only']} / {m['a_only']} | "
                         f"{_fmt_p(m)} |")
    src = study["sources"]
    if src:
        lines += ["", "Sources (their own task): " + "; ".join(
            f"{obj}: clean {s['clean']:.3f}, {robust} {s.get(robust, float('nan')):.3f}, {s['train_seconds']:.0f} s"
            for obj, s in src.items()) + "."]
    return "\n".join(lines) + "\n"


def plot_study(study: dict, out: Path) -> None:
    for name, fig in (("pareto.png", transfer_pareto_figure(study)), ("bars.png", transfer_bars_figure(study)),
                      ("ecdf.png", transfer_ecdf_figure(study))):
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
