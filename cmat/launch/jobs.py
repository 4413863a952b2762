"""A bench's unit of work: one run (method × seed) in its own directory, and how it executes.

A :class:`Job` is plain data (its configuration as YAML text), so it travels to a worker
process, into a SLURM job (submitit pickles :func:`execute_job`) or into ``job.json`` beside
the run. Executing a job:

- a run directory with ``checkpoint.h5`` of the same configuration **resumes** from it (a run
  killed after task k continues at task k + 1 and ends with exactly the results an
  uninterrupted run gets, :class:`cmat.engine.Run`); any other leftover (a checkpoint of
  another configuration, a partial store) is removed and the run **restarts**;
- the run's own lines go to ``run.log`` in its directory, its progress to ``progress.json``.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import yaml

from cmat import config as config_mod
from cmat.engine import Run
from cmat.errors import CmatError

LEFTOVERS = ("results.json", "store.h5", "checkpoint.h5", "eval.h5", "progress.json")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child process (``preexec_fn``, a pool initializer, each torchrun rank): ask the kernel
    for SIGKILL when the parent dies, ``kill -9`` included (Linux; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass
class Job:
    """One run of a bench or study. ``deps``: names of jobs whose finished runs it reads
    (CMAT's goals from ``at-individual`` of the same seed); ``threads``: intra-op threads
    (0 = the configuration's; a configuration that pins fewer keeps them); ``gpus``: GPU indices
    it may use (local launcher); ``resume``: set by :func:`prepare_run_dir`."""
    name: str
    run_dir: str
    cfg_yaml: str
    label: str
    deps: tuple = ()
    method: str = ""
    seed: int = 0
    threads: int = 0
    gpus: tuple = field(default_factory=tuple)
    resume: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @staticmethod
    def from_json(text: str) -> "Job":
        data = json.loads(text)
        data["deps"], data["gpus"] = tuple(data.get("deps", ())), tuple(data.get("gpus", ()))
        return Job(**data)


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a killed or foreign run left (results, store, checkpoint, outcomes, progress)."""
    for name in LEFTOVERS:
        (run_dir / name).unlink(missing_ok=True)


def prepare_run_dir(job: Job) -> Job:
    """Make the job's directory ready for a (re)start, once, before any process runs it: the
    job with ``resume`` True when a checkpoint of its configuration is there to continue from."""
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = run_dir / "config.yaml"
    resume = ((run_dir / "checkpoint.h5").exists() and stored.exists()
              and config_mod.stored_config_matches(stored.read_text(), job.cfg_yaml))
    if resume:
        for name in ("results.json", "store.h5", "eval.h5"):
            (run_dir / name).unlink(missing_ok=True)
    else:
        clear_run_dir(run_dir)
    return replace(job, resume=resume)


def run_job(job: Job) -> dict:
    """Run (or resume, ``job.resume``) the job's run in this process, its printed lines appended
    to ``run.log`` in its directory (a resumed run keeps the first attempt's lines above its own).
    Under torchrun every rank calls this; rank 0 writes."""
    cfg = config_mod.from_dict(yaml.safe_load(job.cfg_yaml))
    run_dir = Path(job.run_dir)
    if job.threads:
        cfg.threads = min(cfg.threads, job.threads) if cfg.threads else job.threads
    with open(run_dir / "run.log", "a", buffering=1) as fh, contextlib.redirect_stdout(fh), \
            contextlib.redirect_stderr(fh):
        try:
            return Run(cfg, run_dir, progress=False, verbose=True, resume=job.resume, label=job.label).execute()
        except CmatError as err:
            if not job.resume:
                raise
            print(f"[{job.label}] could not resume ({err}); restarting the run", flush=True)
            clear_run_dir(run_dir)
            return Run(cfg, run_dir, progress=False, verbose=True, label=job.label).execute()


def run_inline(job: Job, progress: bool = True, verbose: bool = True) -> dict:
    """``cmat bench --jobs 1``: the job in this process, its lines and progress bars on the
    console (as ``cmat run`` shows them); resumes a checkpoint of the same configuration."""
    job = prepare_run_dir(job)
    cfg = config_mod.from_dict(yaml.safe_load(job.cfg_yaml))
    try:
        return Run(cfg, job.run_dir, progress=progress, verbose=verbose, resume=job.resume, label=job.label).execute()
    except CmatError as err:
        if not job.resume:
            raise
        print(f"[{job.label}] could not resume ({err}); restarting the run", flush=True)
        clear_run_dir(Path(job.run_dir))
        return Run(cfg, job.run_dir, progress=progress, verbose=verbose, label=job.label).execute()


def worker_command(job_file: Path, n_gpus: int) -> list:
    """The command that executes a job file: this Python, or torchrun with one process per GPU
    when the run has several (the run's distributed path, :mod:`cmat.distributed`)."""
    if n_gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}",
                "-m", "cmat.launch.worker", str(job_file)]
    return [sys.executable, "-m", "cmat.launch.worker", str(job_file)]


def worker_main(argv: Optional[list] = None) -> int:
    """``python -m cmat.launch.worker JOB.json``: run one prepared job; exit 0 when it finished,
    1 with one line on stderr (and in run.log) when it failed."""
    die_with_parent()  # torchrun's ranks too: none outlives the process that started it
    argv = sys.argv[1:] if argv is None else argv
    job = Job.from_json(Path(argv[0]).read_text())
    try:
        run_job(job)
    except CmatError as err:
        with open(Path(job.run_dir) / "run.log", "a") as fh:
            fh.write(f"error: {err}\n")
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
