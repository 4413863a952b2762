"""The study end to end: validate, plan the sources and cells still to run as jobs, hand them
to the one scheduler (:func:`cmat.launch.launch`: inline, worker processes or SLURM), then
collect, summarise and write (:mod:`cmat.transfer_study.analysis`)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from cmat import config as config_mod
from cmat.atomic import atomic_write_text
from cmat.bench import reusable_run
from cmat.engine import resolve_device
from cmat.errors import CmatError
from cmat.evaluate import build_attacks
from cmat.tasks import tasks_for_config
from cmat.launch import LaunchOptions, launch, refuse_live_slurm_jobs, run_job_for
from cmat.rundir import RunLock, lock_runs, read_results
from cmat.transfer import default_tl_k
from cmat.transfer_study.analysis import summarize_study, write_study
from cmat.transfer_study.cells import cell_job
from cmat.transfer_study.plan import (cell_key, check_strategies, plan, reusable_cell, source_config,
                                      study_objectives)


def run_study(cfg, out, source_task: int = 0, target_task: int = 1, strategies=None, jobs: int = 1,
              verify_samples: int = 30, verify_iters: int = 10, progress: bool = True, say=print,
              launch_opts=None) -> dict:
    """Run (or reuse) both sources and every cell; write study.csv/.json/.md, CSVs and plots.
    ``jobs`` worker processes on this machine, or with ``launch_opts.launcher == "slurm"`` every
    source and cell a SLURM job, each cell ``afterok`` its source's; returns ``{"pending": True}``
    when jobs were submitted and not waited for (``--no-wait``, ``--dry-run``)."""
    seq, strategies, objectives = check_study(cfg, source_task, target_task, strategies, verify_samples,
                                              verify_iters, jobs)
    device = resolve_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_yaml = config_mod.to_yaml(cfg)
    settings = {"source_task": source_task, "target_task": target_task, "bound": "crown",
                "verify_samples": int(verify_samples), "verify_iters": int(verify_iters), "eps_max_factor": 2.0}
    cells = plan(strategies, objectives[1])
    opts = replace(launch_opts, jobs=jobs) if launch_opts else LaunchOptions(jobs=jobs)
    opts.check()
    local = opts.launcher == "local"
    # this process holds every source's and cell's lock for its workers; SLURM jobs hold their own
    dirs = [out / "sources" / o for o in objectives] + [out / "cells" / c.name for c in cells] if local else []
    with RunLock(out, "cmat transfer-study"), lock_runs(dirs, "cmat transfer-study"):
        if local:
            refuse_live_slurm_jobs(out, "local study")
        atomic_write_text(out / "config.yaml", cfg_yaml)
        say(f"transfer study on {cfg.tasks}: source task {source_task + 1} ({seq[source_task].name}) → target task "
            f"{target_task + 1} ({seq[target_task].name}); 2 sources + {len(cells)} cells "
            f"({', '.join(strategies)} × {{standard, {objectives[1]}}} per source, scratch)")
        study_jobs = plan_jobs(cfg, out, cfg_yaml, source_task, objectives, cells, settings, say)
        where = f"{jobs} worker{'s' if jobs > 1 else ''} on {device.type}" if local else "SLURM jobs"
        total = 2 + len(cells)
        say("everything reused" if not study_jobs else f"all {total} to run ({where})" if len(study_jobs) == total
            else f"{len(study_jobs)} of {total} to run ({where}); the rest reused")
        started = time.time()
        states = launch(study_jobs, out, opts, f"transfer study {out}", progress=progress, say=say) \
            if study_jobs else {}
        failed = sorted(n for n, s in states.items() if s in ("failed", "skipped"))
        if failed:
            raise CmatError(f"{len(failed)} job(s) did not finish: {', '.join(failed)} (logs: run.log and slurm/ in "
                            f"{out}/sources/* and {out}/cells/*); the same command runs them again and reuses the rest")
        if opts.dry_run or any(s != "done" for s in states.values()):
            return {"pending": True}
        study = collect(cfg, seq, out, cfg_yaml, source_task, target_task, strategies, objectives, cells, settings)
        for j in study_jobs:
            say(f"[{j.label}] {j.describe(j)}")
        write_study(out, study)
        say(f"transfer study finished in {(time.time() - started) / 60:.1f} min")
        return study


def check_study(cfg, source_task, target_task, strategies, verify_samples, verify_iters, jobs) -> tuple:
    """``(tasks, strategies, objectives)`` once every input is checked, before anything trains."""
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
    objectives = study_objectives(cfg.objective.name)
    for obj in objectives:
        config_mod.validate(source_config(cfg, obj, source_task))
    check_strategies(cfg, seq, source_task, target_task, strategies)
    return seq, strategies, objectives


def plan_jobs(cfg, out: Path, cfg_yaml: str, source_task: int, objectives, cells, settings: dict, say) -> list:
    """The jobs of the sources and cells that are not finished, sources first; a cell whose
    source is finished is finished when its recomputed key matches (a cell after a source that
    trains again checks that itself, :func:`cmat.transfer_study.cells.run_cell_job`)."""
    jobs, pending = [], set()
    for obj in objectives:
        scfg = source_config(cfg, obj, source_task)
        run_dir = out / "sources" / obj
        if reusable_run(run_dir, scfg, say):
            say(f"[source {obj}] reusing the finished run in {run_dir}")
            continue
        pending.add(obj)
        jobs.append(run_job_for(f"source-{obj}", run_dir, config_mod.to_yaml(scfg), f"source {obj}"))
    for cell in cells:
        if cell.source not in pending:
            store = None if cell.source == "none" else out / "sources" / cell.source / "store.h5"
            cell_dir = out / "cells" / cell.name
            if reusable_cell(cell_dir, cell_key(cfg_yaml, cell, store, settings), say) is not None:
                say(f"[{cell.name}] reusing the finished cell in {cell_dir}")
                continue
        jobs.append(cell_job(out, cfg_yaml, cell, settings, cell.source in pending))
    return jobs


def collect(cfg, seq, out: Path, cfg_yaml: str, source_task, target_task, strategies, objectives, cells,
            settings) -> dict:
    """The study from the finished sources and cells (every cell's key recomputed from its
    source's weights: a cell of another source or configuration is an error, not a row)."""
    sources = {obj: read_results(out / "sources" / obj) for obj in objectives}
    records = {}
    for c in cells:
        store = None if c.source == "none" else out / "sources" / c.source / "store.h5"
        rec = reusable_cell(out / "cells" / c.name, cell_key(cfg_yaml, c, store, settings))
        if rec is None:
            raise CmatError(f"cell {c.name} finished without a result of this study's configuration "
                            f"(see {out / 'cells' / c.name / 'run.log'})")
        records[c.name] = rec
    return summarize_study(cfg, seq, source_task, target_task, strategies, cells, records, sources, settings,
                           objectives[1])
