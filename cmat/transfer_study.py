"""``cmat transfer-study``: the robustness-transfer study end to end in one command.

1. **Sources.** Two plain networks trained on the source task (``at-individual`` runs of the
   sequence's first ``source_task + 1`` tasks): objective ``standard`` and ``pgd``. They are
   ordinary run directories under ``OUT/sources/`` (a finished one with the same configuration
   is reused, as ``cmat bench`` does).
2. **Cells.** On the target task, for each source: ``linear``, ``tl-K``, ``finetune`` and ``lwf``
   (:mod:`cmat.transfer`), each with target objective ``standard`` and ``pgd``; plus ``scratch``
   with both objectives (``source_objective`` = ``none``). Every cell is evaluated by the
   harness (:func:`cmat.evaluate.evaluate_task`: clean, the configured attacks and ``worst``,
   all on the same images), certified at the run's ε with CROWN (the tightest bound cmat has;
   ``certified`` counts images proven for every point of the ball), and bracketed per sample
   by critical-ε bisection (certified lower end, PGD upper end; VERONA's CSV columns) on the
   first ``verify_samples`` correctly classified evaluated images. Cost: training seconds and
   ``grad_evals`` = forward+backward passes per image spent on the target, attack steps
   included. A finished cell (``cells/<name>/cell.json`` with the same key) is reused.
3. **Outputs.** ``study.csv`` (the columns in :data:`CSV_COLUMNS`), ``study.json`` (everything,
   with n, 95% intervals, ratios against scratch PGD-AT and exact McNemar tests), ``study.md``,
   ``critical_eps.csv`` and the plots ``pareto.png`` (robust accuracy against cost, Pareto
   front), ``bars.png`` (grouped per strategy) and ``ecdf.png`` (critical ε per strategy).

Cells run in ``jobs`` worker processes (one CPU thread each on a CPU; cells are independent).
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cmat.errors import CmatError

SOURCE_OBJECTIVES = ("standard", "pgd")
TARGET_OBJECTIVES = ("standard", "pgd")
CSV_COLUMNS = ("source_objective", "strategy", "target_objective", "clean", "pgd10", "pgd40", "worst", "certified",
               "train_seconds", "grad_evals")
ACCURACY_COLUMNS = ("clean", "pgd10", "pgd40", "aa", "worst", "certified")
FORMAT = 1  # bump when a cell's contents change meaning (invalidates reuse)


@dataclass(frozen=True)
class Cell:
    """One trained target model: ``source`` objective (``none`` for scratch), strategy, target objective."""

    source: str
    strategy: str
    target: str

    @property
    def name(self) -> str:
        return f"{self.source}-{self.strategy}-{self.target}"

    @property
    def label(self) -> str:
        src = "scratch" if self.source == "none" else f"{self.source} source"
        return f"{src}, {self.strategy}, {self.target} target"


def plan(strategies) -> list:
    """Every cell of the study, PGD targets first (the long ones start early)."""
    cells = [Cell(s, st, t) for s in SOURCE_OBJECTIVES for st in strategies for t in TARGET_OBJECTIVES]
    cells += [Cell("none", "scratch", t) for t in TARGET_OBJECTIVES]
    return sorted(cells, key=lambda c: c.target != "pgd")


# ----------------------------------------------------------------------------- one cell


def _source_config(cfg, objective: str, source_task: int):
    out = copy.deepcopy(cfg)
    out.method, out.max_tasks = "at-individual", source_task + 1
    out.objective.name = objective
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cell_key(cfg_yaml: str, cell: Cell, source_store: Optional[Path], settings: dict) -> str:
    """What a cell's result depends on: configuration, cell, source weights, study settings."""
    h = hashlib.sha256()
    for part in (str(FORMAT), cfg_yaml, cell.name, _file_digest(source_store) if source_store else "none",
                 json.dumps(settings, sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def run_cell(cell: Cell, cfg_yaml: str, source_dir: Optional[str], out_dir: str, settings: dict, key: str,
             progress: bool, threads: int = 0) -> dict:
    """Train, evaluate and verify one cell; writes ``cell.json`` and the cell's VERONA CSV.

    Runs in a worker process as well as inline (every argument is plain data)."""
    import torch

    import cmat
    from cmat import config as config_mod
    from cmat.atomic import atomic_write_text
    from cmat.engine import resolve_device
    from cmat.evaluate import build_attacks, evaluate_task
    from cmat.tblog import RunLogger
    from cmat.transfer import build_transfer_model, check_compatible, train_transfer
    from cmat.verify import COLUMNS, HARNESS_NEURONS, certified_mask, critical_eps
    from tasks import tasks_for_config

    if threads:
        torch.set_num_threads(threads)
    cfg = config_mod.from_dict(yaml_load(cfg_yaml))
    seq = tasks_for_config(cfg)
    t_idx = settings["target_task"]
    task = seq[t_idx]
    device = resolve_device(cfg.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source_dir is not None:
        source_view = cmat.load(source_dir).model(settings["source_task"])
    else:  # scratch: only the architecture matters; build it untrained
        source_view = _untrained_view(cfg, seq, settings["source_task"])
    check_compatible(source_view.net.spec, task)
    build_transfer_model(source_view, cell.strategy, task.num_classes)  # strategy names fail before training
    logger = RunLogger(out)
    try:
        model, seconds, grad_evals = train_transfer(source_view, cell.strategy, cell.target, task, t_idx, cfg,
                                                    device, logger, progress, label=f"{cell.name} ")
    finally:
        logger.close()
    model = model.eval()
    attacks = build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha, task.num_classes,
                            alphas=cfg.eval.alphas)
    t0 = time.time()
    res = evaluate_task(model, task.test, attacks, task.num_classes, cfg.seed, t_idx, cfg.eval.samples,
                        cfg.eval.batch_size, device)
    eval_seconds = time.time() - t0
    idx = torch.as_tensor(res["clean"]["indices"])
    x, y = task.test.tensors(idx)
    model_cpu = model.cpu()
    t0 = time.time()
    cert = certified_mask(model_cpu, x, y, cfg.threat.eps, settings["bound"], max_neurons=HARNESS_NEURONS).numpy()
    cert &= res["clean"]["correct"]
    correct_ids = np.flatnonzero(res["clean"]["correct"])[: settings["verify_samples"]]
    crit = {"certified": [], "attack": []}
    if len(correct_ids):
        ce = critical_eps(model_cpu, x[correct_ids], y[correct_ids], settings["eps_max_factor"] * cfg.threat.eps,
                          settings["bound"], settings["verify_iters"], seed=cfg.seed, max_neurons=HARNESS_NEURONS)
        crit = {"certified": ce["certified"].tolist(), "attack": ce["attack"].tolist()}
    verify_seconds = time.time() - t0
    per_sample = verify_seconds / max(len(correct_ids), 1)
    columns = {name: res[name] for name in res if name in attacks or name == "worst"}
    columns["certified"] = {"acc": float(cert.mean()) if len(cert) else 0.0, "n": int(len(cert)), "correct": cert}
    row = {"source_objective": cell.source, "strategy": cell.strategy, "target_objective": cell.target,
           **{name: float(c["acc"]) for name, c in columns.items()},
           "train_seconds": seconds, "grad_evals": int(grad_evals)}
    verona = [[cell.name, int(idx[i]), int(y[i]), f"{c:.6g}", f"{a:.6g}", f"{per_sample:.4f}", settings["bound"]]
              for i, c, a in zip(correct_ids.tolist(), crit["certified"], crit["attack"])]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(verona)
    atomic_write_text(out / "critical_eps.csv", buf.getvalue())
    record = {"format": FORMAT, "key": key, "cell": cell.name, "row": row,
              "n": int(len(idx)), "indices": idx.tolist(),
              "outcomes": {name: np.asarray(c["correct"], dtype=np.uint8).tolist() for name, c in columns.items()},
              "critical_eps": crit, "verona": verona,
              "eval_seconds": eval_seconds, "verify_seconds": verify_seconds,
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    atomic_write_text(out / "cell.json", json.dumps(record))
    return record


def _untrained_view(cfg, seq, source_task: int):
    """A plain untrained network of the run's architecture (what ``scratch`` re-initialises)."""
    from cmat.nn.backbones import MultiHeadNet, TaskView

    src = seq[source_task]
    net = MultiHeadNet(cfg.model.arch, src.input_shape[0], src.input_shape[-1], [t.num_classes for t in seq],
                       [t.mean for t in seq], [t.std for t in seq], cfg.model.width)
    return TaskView(net, source_task)


def yaml_load(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def _reusable_cell(path: Path, key: str) -> Optional[dict]:
    try:
        record = json.loads((path / "cell.json").read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("key") == key and record.get("format") == FORMAT else None


# ----------------------------------------------------------------------------- the study


def run_study(cfg, out, source_task: int = 0, target_task: int = 1, strategies=None, jobs: int = 1,
              verify_samples: int = 30, verify_iters: int = 10, progress: bool = True, say=print) -> dict:
    """Run (or reuse) both sources and every cell; write study.csv/.json/.md, CSVs and plots."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing

    from tqdm import tqdm

    from cmat import config as config_mod
    from cmat.atomic import atomic_write_text
    from cmat.bench import _reusable
    from cmat.engine import resolve_device
    from cmat.evaluate import build_attacks
    from cmat.transfer import default_tl_k
    from tasks import tasks_for_config

    config_mod.validate(cfg)
    seq = tasks_for_config(cfg)
    for name, t in (("source task", source_task), ("target task", target_task)):
        if not 0 <= t < len(seq):
            raise CmatError(f"{name} {t} out of range: {cfg.tasks} has tasks 0..{len(seq) - 1}")
    if source_task == target_task:
        raise CmatError("the source and target tasks must differ")
    if verify_samples < 0 or verify_iters < 1:
        raise CmatError("--verify-samples must be ≥ 0 and the bisection steps ≥ 1")
    if jobs < 1:
        raise CmatError(f"--jobs must be ≥ 1, got {jobs}")
    strategies = list(strategies or ("linear", f"tl-{default_tl_k(cfg.model.arch)}", "finetune", "lwf"))
    if "scratch" in strategies:
        strategies.remove("scratch")  # always there, once per target objective
    build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha, seq[target_task].num_classes,
                  alphas=cfg.eval.alphas)
    for obj in SOURCE_OBJECTIVES:
        config_mod.validate(_source_config(cfg, obj, source_task))
    device = resolve_device(cfg.device)
    _check_strategies(cfg, seq, source_task, target_task, strategies)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_yaml = config_mod.to_yaml(cfg)
    atomic_write_text(out / "config.yaml", cfg_yaml)
    settings = {"source_task": source_task, "target_task": target_task, "bound": "crown",
                "verify_samples": int(verify_samples), "verify_iters": int(verify_iters), "eps_max_factor": 2.0}
    cells = plan(strategies)
    inline = jobs == 1
    threads = cfg.threads if inline else max(1, (os.cpu_count() or 1) // jobs)
    say(f"transfer study on {cfg.tasks}: source task {source_task + 1} ({seq[source_task].name}) → target task "
        f"{target_task + 1} ({seq[target_task].name}); 2 sources + {len(cells)} cells "
        f"({', '.join(strategies)} × {{standard, pgd}} per source, scratch); "
        f"{jobs} worker{'s' if jobs > 1 else ''} on {device.type}")
    records: dict = {}
    sources: dict = {}
    started = time.time()
    pool = None if inline else ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    bar = tqdm(total=len(cells) + 2, desc="transfer study", unit="piece", disable=not progress or inline)
    try:
        pending: dict = {}

        def submit(fn, *args, tag):
            if inline:
                return tag, fn(*args)
            pending[pool.submit(fn, *args)] = tag
            return None

        def finished(tag, result):
            bar.update(1)
            elapsed = time.time() - started
            if tag[0] == "source":
                obj = tag[1]
                sources[obj] = result
                s = result["summary"]
                say(f"[source {obj}] clean {s['clean']['acc']:.3f}  worst {s.get('worst', s['clean'])['acc']:.3f}  "
                    f"({result['cost']['train_seconds']:.0f}s training; {elapsed / 60:.1f} min so far)")
                for c in cells:
                    if c.source == obj:
                        start_cell(c)
            else:
                cell = tag[1]
                records[cell.name] = result
                r = result["row"]
                say(f"[{cell.name}] clean {r['clean']:.3f}  pgd10 {r.get('pgd10', float('nan')):.3f}  "
                    f"worst {r.get('worst', float('nan')):.3f}  certified {r['certified']:.3f}  "
                    f"{r['train_seconds']:.0f}s, {r['grad_evals']:,} passes  "
                    f"({len(records)}/{len(cells)} cells, {elapsed / 60:.1f} min so far)")

        def start_cell(cell):
            src_dir = None if cell.source == "none" else out / "sources" / cell.source
            store = None if src_dir is None else src_dir / "store.h5"
            key = cell_key(cfg_yaml, cell, store, settings)
            cell_dir = out / "cells" / cell.name
            old = _reusable_cell(cell_dir, key)
            if old is not None:
                say(f"[{cell.name}] reusing the finished cell in {cell_dir}")
                finished(("cell", cell), old)
                return
            done = submit(run_cell, cell, cfg_yaml, None if src_dir is None else str(src_dir), str(cell_dir),
                          settings, key, progress and inline, threads if not inline else 0, tag=("cell", cell))
            if done is not None:
                finished(*done)

        def start_source(obj):
            scfg = _source_config(cfg, obj, source_task)
            run_dir = out / "sources" / obj
            if _reusable(run_dir, scfg):
                say(f"[source {obj}] reusing the finished run in {run_dir}")
                finished(("source", obj), json.loads((run_dir / "results.json").read_text()))
                return
            for name in ("results.json", "store.h5", "checkpoint.h5", "eval.h5"):
                (run_dir / name).unlink(missing_ok=True)
            done = submit(_run_source, config_mod.to_yaml(scfg), str(run_dir), progress and inline, inline,
                          threads if not inline else 0, tag=("source", obj))
            if done is not None:
                finished(*done)

        for obj in SOURCE_OBJECTIVES:
            start_source(obj)
        for c in cells:
            if c.source == "none":
                start_cell(c)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                tag = pending.pop(fut)
                finished(tag, fut.result())
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    if pool is not None:
        pool.shutdown()
    study = summarize_study(cfg, seq, source_task, target_task, strategies, cells, records, sources, settings)
    write_study(out, study)
    say(f"transfer study finished in {(time.time() - started) / 60:.1f} min")
    return study


def _run_source(cfg_yaml: str, run_dir: str, progress: bool, verbose: bool, threads: int) -> dict:
    import torch

    from cmat import config as config_mod
    from cmat.engine import Run

    if threads:
        torch.set_num_threads(threads)
    cfg = config_mod.from_dict(yaml_load(cfg_yaml))
    label = f"source {cfg.objective.name}"
    return Run(cfg, run_dir, progress=progress, verbose=verbose, label=label).execute()


def _check_strategies(cfg, seq, source_task, target_task, strategies) -> None:
    from cmat.transfer import build_transfer_model, check_compatible

    view = _untrained_view(cfg, seq, source_task)
    check_compatible(view.net.spec, seq[target_task])
    for s in strategies:
        build_transfer_model(view, s, seq[target_task].num_classes)


# ----------------------------------------------------------------------------- analysis


def summarize_study(cfg, seq, source_task, target_task, strategies, cells, records, sources, settings) -> dict:
    """Rows in plan order with n and 95% intervals, ratios against scratch PGD-AT and paired tests."""
    from cmat.metrics import mcnemar_exact, wilson_interval

    rows, extra = [], []
    for c in sorted(cells, key=_display_order(strategies)):
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
    ref = records["none-scratch-pgd"]
    ref_row = ref["row"]
    robust = next(c for c in ("worst", "pgd10", "clean") if c in ref_row)
    ratios, tests = {}, {}
    for c in cells:
        rec = records[c.name]
        r = rec["row"]
        ratios[c.name] = {
            "robust": r[robust] / ref_row[robust] if ref_row[robust] > 0 else None,
            "grad_evals": r["grad_evals"] / ref_row["grad_evals"] if ref_row["grad_evals"] else None,
            "seconds": r["train_seconds"] / ref_row["train_seconds"] if ref_row["train_seconds"] > 0 else None}
        if c.name != "none-scratch-pgd" and rec["indices"] == ref["indices"]:
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
            "robust_column": robust, "rows": rows, "cells": extra, "ratios_vs_scratch_pgd": ratios,
            "mcnemar_vs_scratch_pgd": tests, "headline": headline,
            "sources": {obj: {k: sources[obj]["summary"][k]["acc"] for k in sources[obj]["summary"]}
                        | {"train_seconds": sources[obj]["cost"]["train_seconds"],
                           "grad_evals": sources[obj]["cost"]["grad_evals"]} for obj in sources},
            "critical_eps": {c.name: records[c.name]["critical_eps"] for c in cells}}


def _display_order(strategies):
    order = list(strategies) + ["scratch"]

    def key(c: Cell):
        return (order.index(c.strategy), ["standard", "pgd", "none"].index(c.source), c.target != "standard")

    return key


def write_study(out: Path, study: dict) -> None:
    from cmat.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in study["rows"]:
        w.writerow([r.get(k, "") if not isinstance(r.get(k), float) else f"{r[k]:.6g}" for k in CSV_COLUMNS])
    atomic_write_text(out / "study.csv", buf.getvalue())
    verona = io.StringIO()
    w = csv.writer(verona, lineterminator="\n")
    from cmat.verify import COLUMNS

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


def study_markdown(study: dict) -> str:
    """The study table (n and 95% interval of the robust column), ratios and paired tests."""
    rows, cells, robust = study["rows"], study["cells"], study["robust_column"]
    cols = [c for c in ("clean", "pgd10", "pgd40", "aa", "worst", "certified") if c in rows[0]]
    n = cells[0]["n"]
    lines = [f"Transfer study on `{study['tasks']}`: source task {study['source_task']['name']} → target task "
             f"{study['target_task']['name']}; ε = {study['threat']['eps']:.4g}, {study['epochs']} epochs, seed "
             f"{study['seed']}. Every column on the same n = {n} test images of the target; `{robust}` with its "
             f"95% Wilson interval; `certified` proven by CROWN at ε; passes = forward+backward passes per image "
             f"spent on the target (attack steps included); ratios against scratch PGD-AT.", ""]
    head = (["source", "strategy", "target obj."] + cols + [f"{robust} 95% CI", "train s", "passes",
                                                             f"{robust} / scratch-pgd", "passes / scratch-pgd",
                                                             "McNemar p vs scratch-pgd"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    ratios = study["ratios_vs_scratch_pgd"]
    for r, e in zip(rows, cells):
        lo, hi = e["ci95"].get(robust, (float("nan"), float("nan")))
        rt = ratios[e["cell"]]
        lines.append("| " + " | ".join([r["source_objective"], r["strategy"], r["target_objective"]]
                                       + [f"{r[c]:.3f}" for c in cols]
                                       + [f"[{lo:.3f}, {hi:.3f}]", f"{r['train_seconds']:.0f}", f"{r['grad_evals']:,}",
                                          _fmt_ratio(rt["robust"]), _fmt_ratio(rt["grad_evals"]),
                                          _fmt_p(study["mcnemar_vs_scratch_pgd"].get(e["cell"]))]) + " |")
    lines += ["", f"McNemar: exact paired test on the per-image `{robust}` outcomes of the same images "
                  f"(* = significant at 0.05; – = the reference itself)."]
    h = study.get("headline")
    if h:
        lines += ["", f"Linear probe with a standard target objective: PGD-10 {h['robust_source']:.3f} over the "
                      f"robust source against {h['standard_source']:.3f} over the standard source "
                      f"(difference {h['difference']:+.3f}, McNemar p = {h['mcnemar']['p']:.2g}), at "
                      f"{_fmt_ratio(h['cost_vs_scratch_pgd'])}× the passes of scratch PGD-AT."]
    src = study["sources"]
    if src:
        lines += ["", "Sources (their own task): " + "; ".join(
            f"{obj}: clean {s['clean']:.3f}, {robust} {s.get(robust, float('nan')):.3f}, {s['train_seconds']:.0f} s"
            for obj, s in src.items()) + "."]
    return "\n".join(lines) + "\n"


def plot_study(study: dict, out: Path) -> None:
    from cmat.plots import plt, transfer_bars_figure, transfer_ecdf_figure, transfer_pareto_figure

    for name, fig in (("pareto.png", transfer_pareto_figure(study)), ("bars.png", transfer_bars_figure(study)),
                      ("ecdf.png", transfer_ecdf_figure(study))):
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
