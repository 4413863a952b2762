"""The study on SLURM (``cmat transfer-study --launcher slurm``): each source and each cell one
job (:func:`cmat.launch.slurm.run_units`), every cell ``afterok`` its source's job. A cell's
key depends on its source's weights, which exist only once the source has trained, so a cell
job computes its key itself (:func:`run_cell_job`) and the collecting command recomputes it to
reuse the finished cell — exactly what a local study does with a finished cell directory."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cmat import config as config_mod
from cmat.errors import CmatError
from cmat.launch import LaunchOptions, StatusTable
from cmat.launch.slurm import Unit, run_units
from cmat.transfer_study.cells import run_cell, run_source
from cmat.transfer_study.plan import Cell, cell_key, reusable_cell


def run_cell_job(cell: Cell, cfg_yaml: str, source_dir, cell_dir: str, settings: dict, threads: int) -> dict:
    """A cell inside its SLURM job: key from the (now trained) source, then :func:`run_cell`."""
    store = None if source_dir is None else Path(source_dir) / "store.h5"
    return run_cell(cell, cfg_yaml, source_dir, cell_dir, settings, cell_key(cfg_yaml, cell, store, settings),
                    False, threads)


def _digest(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def study_units(out: Path, cfg_yaml: str, source_cfgs: dict, finished_sources: set, cells: list, settings: dict,
                threads: int, say=None) -> list:
    """Units for the sources not finished and the cells not finished (a cell whose source is
    finished is finished when its recomputed key matches)."""
    units = []
    for obj, scfg in source_cfgs.items():
        if obj in finished_sources:
            continue
        run_dir = out / "sources" / obj
        units.append(Unit(f"source-{obj}", str(run_dir), run_source,
                          (config_mod.to_yaml(scfg), str(run_dir), False, True, threads),
                          _digest(config_mod.to_yaml(scfg)), str(run_dir / "results.json")))
    for cell in cells:
        src_dir = None if cell.source == "none" else out / "sources" / cell.source
        cell_dir = out / "cells" / cell.name
        if src_dir is None or cell.source in finished_sources:
            store = None if src_dir is None else src_dir / "store.h5"
            if reusable_cell(cell_dir, cell_key(cfg_yaml, cell, store, settings), say) is not None:
                continue
        deps = () if src_dir is None or cell.source in finished_sources else (f"source-{cell.source}",)
        units.append(Unit(cell.name, str(cell_dir), run_cell_job,
                          (cell, cfg_yaml, None if src_dir is None else str(src_dir), str(cell_dir), settings, threads),
                          _digest(cfg_yaml, cell.name, json.dumps(settings, sort_keys=True)),
                          str(cell_dir / "cell.json"), deps))
    return units


def run_on_slurm(out: Path, cfg_yaml: str, source_cfgs: dict, finished_sources: set, cells: list, settings: dict,
                 opts: LaunchOptions, progress: bool, say) -> bool:
    """Submit what is not finished and (unless ``--no-wait``) wait for it; True when everything
    finished (the caller collects), False when jobs are still queued or running."""
    units = study_units(out, cfg_yaml, source_cfgs, finished_sources, cells, settings, opts.slurm.cpus_per_run,
                        say)
    if not units:
        return True
    table = StatusTable(f"transfer study {out}", units, live=None if progress else False)
    try:
        states = run_units(units, out, opts.slurm, table, wait=opts.wait, dry_run=opts.dry_run, say=say)
    finally:
        if not opts.dry_run:
            table.close()
    failed = sorted(n for n, s in states.items() if s in ("failed", "skipped"))
    if failed:
        raise CmatError(f"{len(failed)} job(s) did not finish: {', '.join(failed)} (logs: {out}/sources/*/slurm/, "
                        f"{out}/cells/*/slurm/); the same command resubmits them and reuses the rest")
    return all(s == "done" for s in states.values())
