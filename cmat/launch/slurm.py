"""Every run a SLURM job, submitted through submitit (``pip install cmat[slurm]``).

- One job per run, with the partition, time, CPUs, GPUs and memory of :class:`SlurmOptions`
  (flags, or a ``slurm:`` block in the ``--config`` file); a run that reads another run's
  results waits for it with ``--dependency=afterok:<id>``; its logs land in
  ``<run dir>/slurm/`` (submitit's ``<id>_0_log.out`` / ``.err``) and ``<run dir>/run.log``.
- ``OUT/slurm_jobs.json`` records each submitted job (id and the digest of its configuration),
  so the same command later — with ``--no-wait`` or without — collects what finished and
  neither resubmits a job still queued or running nor forgets one that failed.
- Job states come from ``squeue`` (no accounting database needed); a job that left the queue
  finished when its run directory holds ``results.json``, else it failed. A job whose
  dependency failed would wait forever: it is cancelled and reported ``skipped``.
- A run with several GPUs starts torchrun inside its job (one process per GPU).
"""
from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Optional

import yaml

from cmat.atomic import atomic_write_text
from cmat.errors import CmatError
from cmat.launch.jobs import Job, prepare_run_dir, run_job, worker_command
from cmat.launch.local import last_line
from cmat.launch.table import StatusTable

ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "PREEMPTED", "SPECIAL_EXIT", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD")
GRACE_S = 30.0  # a finished job's results may reach a shared file system after it leaves the queue


@dataclass
class SlurmOptions:
    """Per-job resources. ``time_min``: wall-time limit in minutes; ``mem_gb``: memory per job;
    ``extra``: any further sbatch option (``{"account": "lab"}`` → ``--account=lab``)."""
    partition: Optional[str] = None
    time_min: int = 60
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    mem_gb: float = 4.0
    extra: dict = field(default_factory=dict)

    @staticmethod
    def from_file(path: Optional[str], **flags) -> "SlurmOptions":
        """The ``slurm:`` block of a configuration file (if any), then the flags that are set."""
        data: dict = {}
        if path:
            try:
                block = (yaml.safe_load(Path(path).read_text()) or {}).get("slurm") or {}
            except (OSError, yaml.YAMLError) as err:
                raise CmatError(f"cannot read the slurm block of {path}: {err}") from None
            if not isinstance(block, dict):
                raise CmatError(f"config {path}: slurm must be a mapping")
            data.update(block)
        names = {f.name for f in fields(SlurmOptions)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CmatError(f"config {path}: unknown slurm key(s) {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        data.update({k: v for k, v in flags.items() if v is not None})
        try:
            for key, kind in (("time_min", int), ("cpus_per_run", int), ("gpus_per_run", int), ("mem_gb", float)):
                if key in data:
                    data[key] = kind(data[key])
        except (TypeError, ValueError):
            raise CmatError(f"slurm: {key} must be a number, got {data[key]!r}") from None
        if not isinstance(data.get("extra", {}), dict) or not isinstance(data.get("partition") or "", str):
            raise CmatError("slurm: extra must be a mapping of sbatch options and partition a name")
        opts = SlurmOptions(**data)
        if opts.time_min < 1 or opts.cpus_per_run < 1 or opts.gpus_per_run < 0 or opts.mem_gb <= 0:
            raise CmatError("slurm: time ≥ 1 min, cpus ≥ 1, gpus ≥ 0 and memory > 0 required")
        return opts

    def sbatch_parameters(self, name: str, dependency: Optional[str]) -> dict:
        params = {"job_name": f"cmat-{name}", "time": int(self.time_min), "cpus_per_task": int(self.cpus_per_run),
                  "mem": f"{int(self.mem_gb * 1024)}M", "ntasks_per_node": 1, "nodes": 1}
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_run:
            params["gpus_per_node"] = int(self.gpus_per_run)
        if dependency:
            params["dependency"] = dependency
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


def slurm_entry(job: Job) -> None:
    """What a SLURM job runs: prepare the run directory (resume or restart), then the run —
    in this process, or under torchrun when the job has several GPUs."""
    job = prepare_run_dir(job)
    n_gpus = len(job.gpus)
    if n_gpus > 1:
        job_file = Path(job.run_dir) / "job.json"
        job_file.write_text(job.to_json())
        code = subprocess.call(worker_command(job_file, n_gpus))
        if code != 0:
            raise RuntimeError(f"torchrun exited with {code}; see {job.run_dir}/run.log")
        return
    run_job(job)


def job_digest(job: Job) -> str:
    return hashlib.sha256(job.cfg_yaml.encode()).hexdigest()[:16]


def queue_states() -> dict:
    """job id → state of this user's jobs SLURM still knows (squeue)."""
    try:
        out = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i %T"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CmatError(f"squeue failed: {err}") from None
    if out.returncode != 0:
        raise CmatError(f"squeue failed: {out.stderr.strip() or out.stdout.strip()}")
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())


@dataclass
class Unit:
    """One SLURM job: ``fn(*args)`` run in the job, logs in ``folder/slurm/``; ``digest`` says
    what it computes (a recorded job with another digest is stale); ``done`` whether its result
    is there once it left the queue; ``deps``: names of units it runs after (``afterok``)."""
    name: str
    run_dir: str
    fn: Callable
    args: tuple
    digest: str
    done: Callable
    deps: tuple = ()


def job_units(jobs: list, opts: SlurmOptions) -> list:
    """A bench's jobs as units: each runs :func:`slurm_entry` and is done with ``results.json``."""
    return [Unit(j.name, j.run_dir, slurm_entry, (replace(j, threads=opts.cpus_per_run, gpus=tuple(range(opts.gpus_per_run))),),
                 job_digest(j), lambda j=j: (Path(j.run_dir) / "results.json").exists(), j.deps) for j in jobs]


def run_slurm(jobs: list, out: Path, opts: SlurmOptions, table: StatusTable, wait: bool = True,
              dry_run: bool = False, say=print, poll: float = 3.0) -> dict:
    """A bench's jobs on SLURM (:func:`run_units`)."""
    return run_units(job_units(jobs, opts), out, opts, table, wait, dry_run, say, poll)


def run_units(units: list, out: Path, opts: SlurmOptions, table: StatusTable, wait: bool = True,
              dry_run: bool = False, say=print, poll: float = 3.0) -> dict:
    """Submit (or find already submitted) every unit; with ``wait`` poll until all left the queue.
    Returns name → "done" | "failed" | "skipped" | "queued" (not waited for) | "dry-run"."""
    if not dry_run and shutil.which("sbatch") is None:
        raise CmatError("--launcher slurm: sbatch is not on PATH (no SLURM client here); see docs/cluster.md")
    try:
        import submitit
    except ImportError:
        raise CmatError("--launcher slurm needs submitit: pip install 'cmat[slurm]'") from None
    record_path = out / "slurm_jobs.json"
    try:
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
    except ValueError:
        record = {}
    queue = {} if dry_run else queue_states()
    ids: dict = {}
    names = {u.name for u in units}
    for unit in units:  # dependency order: a unit's deps come before it (the caller's order)
        old = record.get(unit.name)
        deps = [ids[d] for d in unit.deps if d in names and d in ids]
        active = old is not None and queue.get(str(old["job_id"])) in ACTIVE
        # still queued or running, for this configuration, after every dependency as it is now
        # (a dependency that has finished since is no longer a unit; one resubmitted has a new id)
        if active and old.get("digest") == unit.digest and all(d in old.get("after", []) for d in deps):
            ids[unit.name] = str(old["job_id"])
            table.set(unit.name, "queued", f"already submitted: job {ids[unit.name]}")
            continue
        if active and not dry_run:  # superseded: never two jobs writing one run directory
            subprocess.run(["scancel", str(old["job_id"])], capture_output=True)
        elif old is not None and not dry_run:
            say(f"[{unit.name}] job {old['job_id']} ended without a result "
                f"({last_line(Path(unit.run_dir) / 'run.log') or 'see ' + unit.run_dir + '/slurm/'}); resubmitting")
        dependency = "afterok:" + ":".join(deps) if deps else None
        params = opts.sbatch_parameters(unit.name, dependency)
        if dry_run:
            say(f"[dry run] {unit.name}: sbatch " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in params.items()
                                                             if k != "additional_parameters")
                + "".join(f" --{k}={v}" for k, v in params.get("additional_parameters", {}).items())
                + (f" (after {', '.join(unit.deps)})" if unit.deps else "") + f" → {unit.run_dir}")
            ids[unit.name] = f"<{unit.name}>"
            continue
        executor = submitit.SlurmExecutor(folder=Path(unit.run_dir) / "slurm")
        executor.update_parameters(**params)
        try:
            ids[unit.name] = str(executor.submit(unit.fn, *unit.args).job_id)
        except Exception as err:  # sbatch refused it (partition, account, time, ...): say so in one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            raise CmatError(f"sbatch refused job {unit.name}: {first}") from None
        record[unit.name] = {"job_id": ids[unit.name], "digest": unit.digest, "after": deps, "submitted": time.time()}
        atomic_write_text(record_path, json.dumps(record, indent=1))
        table.set(unit.name, "queued", f"job {ids[unit.name]}" + (f", after {dependency}" if dependency else ""))
    if dry_run:
        return {u.name: "dry-run" for u in units}
    states = {u.name: "queued" for u in units}
    gone: dict = {}  # name -> when it was first seen out of the queue without its results
    while True:
        queue = queue_states()
        for unit in units:
            if states[unit.name] in ("done", "failed", "skipped"):
                continue
            s = queue.get(ids[unit.name])
            if s in ACTIVE:
                if s == "RUNNING":
                    states[unit.name] = "running"
                    table.set(unit.name, "running", f"job {ids[unit.name]}")
                continue
            ok = unit.done()
            if not ok and time.time() - gone.setdefault(unit.name, time.time()) < GRACE_S:
                continue  # left the queue; its results may still be on their way
            states[unit.name] = "done" if ok else "failed"
            log = Path(unit.run_dir) / "run.log"
            note = f"{last_line(log) or 'no run.log'} (logs: {unit.run_dir}/slurm/)"
            table.set(unit.name, states[unit.name], "" if ok else note)
        for unit in units:  # a job whose dependency failed would pend forever
            if states[unit.name] == "queued" and any(states.get(d) in ("failed", "skipped") for d in unit.deps):
                subprocess.run(["scancel", ids[unit.name]], capture_output=True)
                states[unit.name] = "skipped"
                table.set(unit.name, "skipped", f"needs {', '.join(unit.deps)}, which did not finish")
        if not wait or all(s in ("done", "failed", "skipped") for s in states.values()):
            return states
        table.draw()
        time.sleep(poll)
