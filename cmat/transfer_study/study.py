"""The study end to end: validate, run or reuse both sources and every cell (inline or in
worker processes), then summarise and write (:mod:`cmat.transfer_study.analysis`)."""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from cmat import config as config_mod
from cmat.atomic import atomic_write_text
from cmat.bench import reusable_run
from cmat.engine import resolve_device
from cmat.errors import CmatError
from cmat.evaluate import build_attacks
from cmat.tasks import tasks_for_config
from cmat.launch import die_with_parent, refuse_live_slurm_jobs
from cmat.rundir import RunLock, lock_runs, read_results
from cmat.transfer import default_tl_k
from cmat.transfer_study.analysis import summarize_study, write_study
from cmat.transfer_study.cells import run_cell, run_source
from cmat.transfer_study.cluster import run_on_slurm
from cmat.transfer_study.plan import (cell_key, check_strategies, plan, reusable_cell, source_config,
                                      study_objectives)


def run_study(cfg, out, source_task: int = 0, target_task: int = 1, strategies=None, jobs: int = 1,
              verify_samples: int = 30, verify_iters: int = 10, progress: bool = True, say=print,
              launch_opts=None) -> dict:
    """Run (or reuse) both sources and every cell; write study.csv/.json/.md, CSVs and plots.
    With ``launch_opts.launcher == "slurm"`` every source and cell is a SLURM job
    (:mod:`cmat.transfer_study.cluster`); returns ``{"pending": True}`` when jobs were submitted
    and not waited for (``--no-wait``, ``--dry-run``)."""
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
    robust = cfg.objective.name
    objectives = study_objectives(robust)
    for obj in objectives:
        config_mod.validate(source_config(cfg, obj, source_task))
    device = resolve_device(cfg.device)
    check_strategies(cfg, seq, source_task, target_task, strategies)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_yaml = config_mod.to_yaml(cfg)
    settings = {"source_task": source_task, "target_task": target_task, "bound": "crown",
                "verify_samples": int(verify_samples), "verify_iters": int(verify_iters), "eps_max_factor": 2.0}
    cells = plan(strategies, robust)
    slurm = launch_opts is not None and launch_opts.launcher == "slurm"
    # this process holds every source's and cell's lock for its workers; SLURM jobs hold their own
    dirs = [] if slurm else [out / "sources" / o for o in objectives] + [out / "cells" / c.name for c in cells]
    with RunLock(out, "cmat transfer-study"), lock_runs(dirs, "cmat transfer-study"):
        if not slurm:
            refuse_live_slurm_jobs(out, "local study")
        atomic_write_text(out / "config.yaml", cfg_yaml)
        if slurm:
            return _study_on_slurm(cfg, seq, out, cfg_yaml, source_task, target_task, strategies, objectives, cells,
                                   settings, launch_opts, progress, say)
        return _study_locally(cfg, seq, out, cfg_yaml, source_task, target_task, strategies, objectives, cells,
                              settings, jobs, device, progress, say)


def _study_locally(cfg, seq, out, cfg_yaml, source_task, target_task, strategies, objectives, cells, settings, jobs,
                   device, progress, say) -> dict:
    """Both sources and every cell in this process (``jobs`` 1) or in ``jobs`` worker processes."""
    robust = objectives[1]
    say(f"transfer study on {cfg.tasks}: source task {source_task + 1} ({seq[source_task].name}) → target task "
        f"{target_task + 1} ({seq[target_task].name}); 2 sources + {len(cells)} cells "
        f"({', '.join(strategies)} × {{standard, {robust}}} per source, scratch); "
        f"{jobs} worker{'s' if jobs > 1 else ''} on {device.type}")
    local = LocalStudy(cfg, out, cfg_yaml, source_task, cells, settings, jobs, progress, say)
    local.run(objectives)
    study = summarize_study(cfg, seq, source_task, target_task, strategies, cells, local.records, local.sources,
                            settings, robust)
    write_study(out, study)
    say(f"transfer study finished in {(time.time() - local.started) / 60:.1f} min")
    return study


class LocalStudy:
    """Runs (or reuses) the sources, then each cell once its source has finished: inline
    (``jobs`` 1) or in a pool of ``jobs`` spawned worker processes (none outlives a kill -9)."""

    def __init__(self, cfg, out, cfg_yaml, source_task, cells, settings, jobs, progress, say):
        self.cfg, self.out, self.cfg_yaml, self.source_task = cfg, out, cfg_yaml, source_task
        self.cells, self.settings, self.progress, self.say = cells, settings, progress, say
        self.inline = jobs == 1
        self.threads = 0 if self.inline else max(1, (os.cpu_count() or 1) // jobs)
        self.jobs = jobs
        self.records: dict = {}
        self.sources: dict = {}
        self.pending: dict = {}  # future -> tag
        self.pool = None
        self.started = time.time()
        self.bar = None

    def run(self, objectives) -> None:
        if not self.inline:
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=die_with_parent)
        self.bar = tqdm(total=len(self.cells) + 2, desc="transfer study", unit="piece",
                        disable=not self.progress or self.inline)
        try:
            for obj in objectives:
                self.start_source(obj)
            for c in self.cells:
                if c.source == "none":
                    self.start_cell(c)
            while self.pending:
                done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    self.finished(self.pending.pop(fut), fut.result())
        except BaseException:
            if self.pool is not None:  # stop the cells still training: exiting would wait for them
                self.pool.shutdown(wait=False, cancel_futures=True)
                for child in multiprocessing.active_children():
                    child.kill()
            raise
        finally:
            self.bar.close()
        if self.pool is not None:
            self.pool.shutdown()

    def submit(self, fn, *args, tag) -> None:
        if self.inline:
            self.finished(tag, fn(*args))
        else:
            self.pending[self.pool.submit(fn, *args)] = tag

    def finished(self, tag, result) -> None:
        self.bar.update(1)
        elapsed = time.time() - self.started
        if tag[0] == "source":
            obj = tag[1]
            self.sources[obj] = result
            s = result["summary"]
            cert = f"  certified {s['certified']['acc']:.3f}" if "certified" in s else ""
            self.say(f"[source {obj}] clean {s['clean']['acc']:.3f}  worst {s.get('worst', s['clean'])['acc']:.3f}"
                     f"{cert}  ({result['cost']['train_seconds']:.0f}s training; {elapsed / 60:.1f} min so far)")
            for c in self.cells:
                if c.source == obj:
                    self.start_cell(c)
            return
        cell = tag[1]
        self.records[cell.name] = result
        r = result["row"]
        self.say(f"[{cell.name}] clean {r['clean']:.3f}  pgd10 {r.get('pgd10', float('nan')):.3f}  "
                 f"worst {r.get('worst', float('nan')):.3f}  certified {r['certified']:.3f}  "
                 f"{r['train_seconds']:.0f}s, {r['grad_evals']:,} passes  "
                 f"({len(self.records)}/{len(self.cells)} cells, {elapsed / 60:.1f} min so far)")

    def start_cell(self, cell) -> None:
        src_dir = None if cell.source == "none" else self.out / "sources" / cell.source
        key = cell_key(self.cfg_yaml, cell, None if src_dir is None else src_dir / "store.h5", self.settings)
        cell_dir = self.out / "cells" / cell.name
        old = reusable_cell(cell_dir, key, self.say)
        if old is not None:
            self.say(f"[{cell.name}] reusing the finished cell in {cell_dir}")
            self.finished(("cell", cell), old)
            return
        self.submit(run_cell, cell, self.cfg_yaml, None if src_dir is None else str(src_dir), str(cell_dir),
                    self.settings, key, self.progress and self.inline, self.threads, tag=("cell", cell))

    def start_source(self, obj) -> None:
        scfg = source_config(self.cfg, obj, self.source_task)
        run_dir = self.out / "sources" / obj
        if reusable_run(run_dir, scfg, self.say):
            self.say(f"[source {obj}] reusing the finished run in {run_dir}")
            self.finished(("source", obj), read_results(run_dir))
            return
        self.submit(run_source, config_mod.to_yaml(scfg), str(run_dir), self.progress and self.inline, self.inline,
                    self.threads, tag=("source", obj))


def _study_on_slurm(cfg, seq, out, cfg_yaml, source_task, target_task, strategies, objectives, cells, settings,
                    launch_opts, progress, say) -> dict:
    launch_opts.check()
    source_cfgs = {obj: source_config(cfg, obj, source_task) for obj in objectives}
    finished = {obj for obj, scfg in source_cfgs.items() if reusable_run(out / "sources" / obj, scfg, say)}
    say(f"transfer study on {cfg.tasks} through SLURM: 2 sources + {len(cells)} cells, "
        f"{len(finished)} source(s) already finished")
    if not run_on_slurm(out, cfg_yaml, source_cfgs, finished, cells, settings, launch_opts, progress, say):
        return {"pending": True}
    sources = {obj: read_results(out / "sources" / obj) for obj in objectives}
    records = {}
    for c in cells:
        store = None if c.source == "none" else out / "sources" / c.source / "store.h5"
        rec = reusable_cell(out / "cells" / c.name, cell_key(cfg_yaml, c, store, settings))
        if rec is None:
            raise CmatError(f"cell {c.name} finished without a result of this study's configuration "
                            f"(see {out / 'cells' / c.name / 'slurm'})")
        records[c.name] = rec
    study = summarize_study(cfg, seq, source_task, target_task, strategies, cells, records, sources, settings,
                            objectives[1])
    write_study(out, study)
    return study
