"""The one unit of work every launcher schedules: a :class:`Job` says what to call, in which
directory, after which other jobs, and which file it leaves when it finished.

A bench's method × seed and a transfer study's source are :func:`run_job_for` jobs (one run
of a configuration); a study's cell is a job of :mod:`cmat.transfer_study.cells`. The same job
runs in this process (``--jobs 1``), in a worker process (``python -m cmat.launch.worker
JOB.pkl``, :mod:`cmat.launch.local`), under torchrun (several GPUs) or as a SLURM job
(:mod:`cmat.launch.slurm`): ``fn(job, *args)`` with ``fn`` a module-level function, so the job
pickles by reference. Executing a run job:

- a run directory with ``checkpoint.h5`` of the same configuration **resumes** from it (a run
  killed after task k continues at task k + 1 and ends with exactly the results an
  uninterrupted run gets, :class:`cmat.engine.Run`); any other leftover (a checkpoint of
  another configuration, a partial store) is removed and the run **restarts**;
- outside this process its lines go to ``run.log`` in its directory, its progress to
  ``progress.json``.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import pickle
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import yaml

from cmat import config as config_mod
from cmat.engine import Run
from cmat.errors import CmatError
from cmat.rundir import read_results

LEFTOVERS = ("results.json", "store.h5", "checkpoint.h5", "eval.h5", "progress.json")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child process (``preexec_fn``, each torchrun rank): ask the kernel for SIGKILL when
    the parent dies, ``kill -9`` included (Linux; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass
class Job:
    """One piece of a bench or study. ``fn(job, *args)`` does the work in ``run_dir`` and
    leaves ``result`` (a file name in it) when it finished; ``digest`` names what it computes (a
    recorded SLURM job of another digest is stale); ``deps``: names of jobs it runs after;
    ``prepare(job) -> job``: once, before any process runs it (a run's resume or restart);
    ``describe(job) -> str``: one line on the finished job for the status table;
    ``distributed``: with several GPUs it runs under torchrun, one process per GPU.
    Set by the launcher: ``threads`` (intra-op; 0 = the configuration's), ``gpus``, ``inline``
    (in the launching process: lines on its console), ``progress``, ``verbose``, ``resume``."""
    name: str
    run_dir: str
    fn: Callable
    args: tuple = ()
    label: str = ""
    result: str = "results.json"
    digest: str = ""
    deps: tuple = ()
    prepare: Optional[Callable] = None
    describe: Optional[Callable] = None
    distributed: bool = False
    threads: int = 0
    gpus: tuple = ()
    inline: bool = False
    progress: bool = False
    verbose: bool = True
    resume: bool = False

    @property
    def result_path(self) -> Path:
        return Path(self.run_dir) / self.result


def text_digest(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def execute(job: Job):
    """``fn(job, *args)`` in this process; unless inline, its lines appended to ``run.log`` (a
    resumed run keeps the first attempt's lines above its own). Under torchrun every rank calls
    this; a run's rank 0 writes."""
    if job.inline:
        return job.fn(job, *job.args)
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(job.run_dir) / "run.log", "a", buffering=1) as fh, contextlib.redirect_stdout(fh), \
            contextlib.redirect_stderr(fh):
        return job.fn(job, *job.args)


def run_inline(job: Job, progress: bool = True, verbose: bool = True):
    """``--jobs 1``: the job in this process, its lines and progress bars on the console."""
    job = replace(job, inline=True, progress=progress, verbose=verbose)
    return execute(job.prepare(job) if job.prepare else job)


def write_job_file(job: Job) -> Path:
    """``run_dir/job.pkl``: the prepared job a worker process (or each torchrun rank) executes."""
    path = Path(job.run_dir) / "job.pkl"
    path.write_bytes(pickle.dumps(job))
    return path


def worker_command(job_file: Path, n_gpus: int) -> list:
    """The command that executes a job file: this Python, or torchrun with one process per GPU
    when the run has several (the run's distributed path, :mod:`cmat.distributed`)."""
    if n_gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}",
                "-m", "cmat.launch.worker", str(job_file)]
    return [sys.executable, "-m", "cmat.launch.worker", str(job_file)]


def processes(job: Job) -> int:
    """How many processes the job runs as: one per GPU for a distributed job, else one."""
    return len(job.gpus) if job.distributed and len(job.gpus) > 1 else 1


def worker_main(argv: Optional[list] = None) -> int:
    """``python -m cmat.launch.worker JOB.pkl``: run one prepared job; exit 0 when it finished,
    1 with one line on stderr (and in run.log) when it failed."""
    die_with_parent()  # torchrun's ranks too: none outlives the process that started it
    argv = sys.argv[1:] if argv is None else argv
    job = pickle.loads(Path(argv[0]).read_bytes())
    try:
        execute(job)
    except CmatError as err:
        with open(Path(job.run_dir) / "run.log", "a") as fh:
            fh.write(f"error: {err}\n")
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


# --- the run job: one configuration trained and evaluated in its own directory -----------------

def run_job_for(name: str, run_dir, cfg_yaml: str, label: str, deps: tuple = ()) -> Job:
    """A job that trains and evaluates one run of configuration ``cfg_yaml`` into ``run_dir``
    (a bench's method × seed, a study's source), resuming a checkpoint of the same configuration."""
    return Job(name=name, run_dir=str(run_dir), fn=run_config, args=(cfg_yaml,), label=label,
               digest=text_digest(cfg_yaml), deps=tuple(deps), prepare=prepare_run_dir, describe=describe_run,
               distributed=True)


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a killed or foreign run left (results, store, checkpoint, outcomes, progress)."""
    for name in LEFTOVERS:
        (run_dir / name).unlink(missing_ok=True)


def prepare_run_dir(job: Job) -> Job:
    """Make a run job's directory ready for a (re)start: the job with ``resume`` True when a
    checkpoint of its configuration (``args[0]``) is there to continue from."""
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = run_dir / "config.yaml"
    resume = ((run_dir / "checkpoint.h5").exists() and stored.exists()
              and config_mod.stored_config_matches(stored.read_text(), job.args[0]))
    if resume:
        for name in ("results.json", "store.h5", "eval.h5"):
            (run_dir / name).unlink(missing_ok=True)
    else:
        clear_run_dir(run_dir)
    return replace(job, resume=resume)


def run_config(job: Job, cfg_yaml: str) -> dict:
    """Run (or resume, ``job.resume``) the configuration; a checkpoint that cannot be resumed
    restarts the run after one line."""
    cfg = config_mod.from_dict(yaml.safe_load(cfg_yaml))
    if job.threads:
        cfg.threads = min(cfg.threads, job.threads) if cfg.threads else job.threads

    def run(resume: bool) -> dict:
        return Run(cfg, job.run_dir, progress=job.progress, verbose=job.verbose, resume=resume,
                   label=job.label).execute()

    try:
        return run(job.resume)
    except CmatError as err:
        if not job.resume:
            raise
        print(f"[{job.label}] could not resume ({err}); restarting the run", flush=True)
        clear_run_dir(Path(job.run_dir))
        return run(False)


def describe_run(job: Job) -> str:
    """``clean 0.950  worst 0.810  (312 s training)`` of a finished run."""
    try:
        res = read_results(Path(job.run_dir))
    except CmatError as err:
        return str(err)
    s = res["summary"]
    cert = f"  certified {s['certified']['acc']:.3f}" if "certified" in s else ""
    return (f"clean {s['clean']['acc']:.3f}  worst {s.get('worst', s['clean'])['acc']:.3f}{cert}  "
            f"({res['cost']['train_seconds']:.0f} s training)")
