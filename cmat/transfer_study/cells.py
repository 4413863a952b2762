"""A study's cell: its job (:class:`cmat.launch.Job`), training, evaluation and verification."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cmat import config as config_mod
from cmat.atomic import atomic_write_text
from cmat.bounds import HARNESS_NEURONS, CertifiedCheck, certified_mask
from cmat.engine import resolve_device
from cmat.errors import CmatError
from cmat.evaluate import build_attacks, check_sound, evaluate_task
from cmat.launch.jobs import Job, text_digest
from cmat.rundir import read_json_object
from cmat.store import load as load_run
from cmat.tasks import tasks_for_config
from cmat.tblog import RunLogger
from cmat.transfer import build_transfer_model, check_compatible, train_transfer
from cmat.transfer_study.plan import FORMAT, Cell, cell_key, reusable_cell, untrained_view, yaml_load
from cmat.verify import COLUMNS, critical_eps


def run_cell(cell: Cell, cfg_yaml: str, source_dir: Optional[str], out_dir: str, settings: dict, key: str,
             progress: bool, threads: int = 0) -> dict:
    """Train, evaluate and verify one cell; writes ``cell.json`` and the cell's VERONA CSV.

    Runs in a worker process as well as inline (every argument is plain data)."""
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
        source_view = load_run(source_dir).model(settings["source_task"])
    else:  # scratch: only the architecture matters; build it untrained
        source_view = untrained_view(cfg, seq, settings["source_task"])
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
    t0 = time.time()
    cert, correct_ids, crit, y = _verify_cell(model.cpu(), task, idx, res, cfg, settings, t_idx)
    verify_seconds = time.time() - t0
    per_sample = verify_seconds / max(len(correct_ids), 1)
    columns = {name: res[name] for name in res if name in attacks or name == "worst"}
    columns["certified"] = {"acc": float(cert.mean()) if len(cert) else 0.0, "n": int(len(cert)), "correct": cert}
    row = {"source_objective": cell.source, "strategy": cell.strategy, "target_objective": cell.target,
           **{name: float(c["acc"]) for name, c in columns.items()},
           "train_seconds": seconds, "grad_evals": int(grad_evals)}
    verona = [[cell.name, int(idx[i]), int(y[i]), f"{c:.6g}", f"{a:.6g}", f"{per_sample:.4f}", settings["bound"]]
              for i, c, a in zip(correct_ids.tolist(), crit["certified"], crit["attack"])]
    _write_verona(out / "critical_eps.csv", verona)
    record = {"format": FORMAT, "key": key, "cell": cell.name, "row": row,
              "n": int(len(idx)), "indices": idx.tolist(),
              "outcomes": {name: np.asarray(c["correct"], dtype=np.uint8).tolist() for name, c in columns.items()},
              "critical_eps": crit, "verona": verona,
              "eval_seconds": eval_seconds, "verify_seconds": verify_seconds,
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    atomic_write_text(out / "cell.json", json.dumps(record))
    return record


def _verify_cell(model_cpu, task, idx, res: dict, cfg, settings: dict, t_idx: int):
    """``(certified mask, ids of correct images verified, critical ε brackets, labels)`` of the
    evaluated images ``idx``: certified by the harness's proof where it ran, else by the
    study's bound (checked against every attack); critical ε for the first ``verify_samples``."""
    x, y = task.test.tensors(idx)
    if "certified" in res:  # the harness proved it (same bound) and checked it against every attack
        cert = np.asarray(res["certified"]["correct"], dtype=bool)
    else:
        cert = certified_mask(model_cpu, x, y, cfg.threat.eps, settings["bound"], max_neurons=HARNESS_NEURONS).numpy()
        cert &= res["clean"]["correct"]
        check_sound({**res, "certified": {"correct": cert}}, {"certified": CertifiedCheck(cfg.threat.eps)}, t_idx)
    correct_ids = np.flatnonzero(res["clean"]["correct"])[: settings["verify_samples"]]
    crit = {"certified": [], "attack": []}
    if len(correct_ids):
        ce = critical_eps(model_cpu, x[correct_ids], y[correct_ids], settings["eps_max_factor"] * cfg.threat.eps,
                          settings["bound"], settings["verify_iters"], seed=cfg.seed, max_neurons=HARNESS_NEURONS)
        crit = {"certified": ce["certified"].tolist(), "attack": ce["attack"].tolist()}
    return cert, correct_ids, crit, y


def _write_verona(path: Path, rows: list) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def cell_job(out: Path, cfg_yaml: str, cell: Cell, settings: dict, source_pending: bool) -> Job:
    """The job of one cell in ``OUT/cells/<name>``, after its source's job when that one trains
    (``source_pending``); done when it left ``cell.json``."""
    src_dir = None if cell.source == "none" else out / "sources" / cell.source
    return Job(name=cell.name, run_dir=str(out / "cells" / cell.name), fn=run_cell_job,
               args=(cell, cfg_yaml, None if src_dir is None else str(src_dir), settings, source_pending),
               label=cell.name, result="cell.json", describe=describe_cell,
               digest=text_digest(cfg_yaml, cell.name, json.dumps(settings, sort_keys=True)),
               deps=(f"source-{cell.source}",) if source_pending else ())


def run_cell_job(job: Job, cell: Cell, cfg_yaml: str, source_dir: Optional[str], settings: dict,
                 source_pending: bool) -> dict:
    """A cell inside its job: its key from the source's weights (which exist only once the source
    has trained), then the finished cell of that key when one is there (a source retrained bit
    for bit), else :func:`run_cell`."""
    store = None if source_dir is None else Path(source_dir) / "store.h5"
    key = cell_key(cfg_yaml, cell, store, settings)
    old = reusable_cell(Path(job.run_dir), key, print) if source_pending else None
    if old is not None:
        print(f"[{cell.name}] reusing the finished cell in {job.run_dir}")
        return old
    return run_cell(cell, cfg_yaml, source_dir, job.run_dir, settings, key, job.progress, job.threads)


def describe_cell(job: Job) -> str:
    """``clean 0.950  pgd10 0.700  worst 0.690  certified 0.500  12 s, 24,000 passes`` of a cell."""
    try:
        row = read_json_object(job.result_path, "cell record")["row"]
        return (f"clean {row['clean']:.3f}  pgd10 {row.get('pgd10', float('nan')):.3f}  "
                f"worst {row.get('worst', float('nan')):.3f}  certified {row['certified']:.3f}  "
                f"{row['train_seconds']:.0f} s, {row['grad_evals']:,} passes")
    except (CmatError, KeyError, TypeError) as err:
        return f"unreadable cell record ({err})"
