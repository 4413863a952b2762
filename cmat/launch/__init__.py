"""Where a bench's runs and a transfer study's sources and cells execute: in this process one
after another (``--jobs 1``), in up to N worker processes on this machine (``--jobs N``,
:mod:`cmat.launch.local`), or as SLURM jobs through submitit (``--launcher slurm``,
:mod:`cmat.launch.slurm`). Every launcher takes the same :class:`~cmat.launch.jobs.Job` list and
leaves the same directories, so the tables do not depend on where the jobs ran;
:mod:`cmat.launch.table` shows their progress."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmat.errors import CmatError
from cmat.launch.jobs import Job, die_with_parent, run_inline, run_job_for  # noqa: F401
from cmat.launch.local import run_local  # noqa: F401
from cmat.launch.slurm import SlurmOptions, live_jobs, refuse_live_slurm_jobs, run_slurm  # noqa: F401
from cmat.launch.table import StatusTable

LAUNCHERS = ("local", "slurm")


@dataclass
class LaunchOptions:
    """``jobs``: runs at once (local); ``wait``: False submits and returns (slurm);
    ``dry_run``: print the SLURM jobs without submitting."""
    launcher: str = "local"
    jobs: int = 1
    gpus_per_run: int = 1
    wait: bool = True
    dry_run: bool = False
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise CmatError(f"unknown launcher {self.launcher!r} (valid: {', '.join(LAUNCHERS)})")
        if self.jobs < 1:
            raise CmatError(f"--jobs must be ≥ 1, got {self.jobs}")
        if self.launcher == "local" and (self.dry_run or not self.wait):
            raise CmatError("--dry-run and --no-wait apply to --launcher slurm only")


def launch(jobs: list, out: Path, opts: LaunchOptions, title: str, progress: bool = True, verbose: bool = True,
           say=print) -> dict:
    """Execute ``jobs`` (in dependency order) by ``opts``; name → final state ("done", "failed",
    "skipped"; "queued" for SLURM jobs not waited for; "dry-run"). The one scheduler of every
    bench and study: in this process one after another, in worker processes, or on SLURM."""
    opts.check()
    if opts.launcher == "local" and opts.jobs == 1:
        for job in jobs:
            run_inline(job, progress=progress, verbose=verbose)
        return {j.name: "done" for j in jobs}
    table = StatusTable(title, jobs, enabled=True, live=None if progress else False)
    try:
        if opts.launcher == "local":
            return run_local(jobs, opts.jobs, table, opts.gpus_per_run)
        return run_slurm(jobs, Path(out), opts.slurm, table, wait=opts.wait, dry_run=opts.dry_run, say=say)
    finally:
        if not opts.dry_run:
            table.close()
