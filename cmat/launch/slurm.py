"""Every :class:`~cmat.launch.jobs.Job` (a bench's run, a study's source or cell) a SLURM job,
submitted through submitit (``pip install cmat[slurm]``).

- One SLURM job per job, with the partition, time, CPUs, GPUs and memory of :class:`SlurmOptions`
  (flags, or a ``slurm:`` block in the ``--config`` file); a job that reads another's
  results waits for it with ``--dependency=afterok:<id>``; its logs land in
  ``<run dir>/slurm/`` (submitit's ``<id>_0_log.out`` / ``.err``) and ``<run dir>/run.log``.
- ``OUT/slurm_jobs.json`` records each submitted job (id and the digest of its configuration),
  so the same command later — with ``--no-wait`` or without — collects what finished and
  neither resubmits a job still queued or running nor forgets one that failed. An unreadable
  record is one line (it is what says which jobs may still write), never a fresh start.
- Every job holds its run directory's lock (:class:`cmat.rundir.RunLock`) while it writes, and
  stamps its result file (``results.json``, a cell's ``cell.json``) with ``slurm``:
  ``{"job_id": $SLURM_JOB_ID, "digest": <the configuration digest the launcher passed>}``.
- Job states come from ``squeue`` (no accounting database needed). A job that left the queue
  finished only when its result file carries its own job id and digest; anything else there (a
  result of an earlier configuration or job, a job cancelled while pending) is reported and the
  job counts as failed: the same command resubmits it. A job whose dependency failed would wait
  forever: it is cancelled and reported ``skipped``.
- A superseded job (its configuration changed while it was queued or running) is cancelled and
  awaited until ``squeue`` no longer lists it, before its replacement is submitted into the same
  directory.
- A distributed job (a run) with several GPUs starts torchrun inside its SLURM job (one process
  per GPU).
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import yaml

from cmat.atomic import atomic_write_text
from cmat.errors import CmatError
from cmat.launch.jobs import Job, execute, processes, worker_command, write_job_file
from cmat.launch.local import last_line
from cmat.launch.table import StatusTable
from cmat.rundir import RunLock, read_json_object

ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "PREEMPTED", "SPECIAL_EXIT", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD")
CANCEL_WAIT_S = 600.0  # how long a cancelled job may take to leave the queue (KillWait, epilog)


@dataclass
class SlurmOptions:
    """Per-job resources. ``time_min``: wall-time limit in minutes; ``mem_gb``: memory per job;
    ``extra``: any further sbatch option (``{"account": "lab"}`` → ``--account=lab``);
    ``result_wait_s``: how long a job's result file may take to appear on a shared file system
    after the job left the queue (then it failed)."""
    partition: Optional[str] = None
    time_min: int = 60
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    mem_gb: float = 4.0
    extra: dict = field(default_factory=dict)
    result_wait_s: float = 30.0

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
            raise CmatError(f"config {path}: unknown slurm key(s) {', '.join(unknown)} "
                            f"(valid: {', '.join(sorted(names))})")
        data.update({k: v for k, v in flags.items() if v is not None})
        try:
            for key, kind in (("time_min", int), ("cpus_per_run", int), ("gpus_per_run", int), ("mem_gb", float),
                              ("result_wait_s", float)):
                if key in data:
                    data[key] = kind(data[key])
        except (TypeError, ValueError):
            raise CmatError(f"slurm: {key} must be a number, got {data[key]!r}") from None
        if not isinstance(data.get("extra", {}), dict) or not isinstance(data.get("partition") or "", str):
            raise CmatError("slurm: extra must be a mapping of sbatch options and partition a name")
        opts = SlurmOptions(**data)
        if opts.time_min < 1 or opts.cpus_per_run < 1 or opts.gpus_per_run < 0 or opts.mem_gb <= 0 \
                or opts.result_wait_s < 0:
            raise CmatError("slurm: time ≥ 1 min, cpus ≥ 1, gpus ≥ 0, memory > 0 and result_wait_s ≥ 0 required")
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


def stamp(path: Path, job_id: str, digest: str) -> None:
    """Mark the result file ``path`` as written by SLURM job ``job_id`` for configuration ``digest``."""
    text = path.read_text()
    record = read_json_object(path, "result file")
    record["slurm"] = {"job_id": str(job_id), "digest": digest}
    atomic_write_text(path, json.dumps(record, indent=1 if text.startswith("{\n") else None))


def result_problem(path: Path, job_id: str, digest: str) -> Optional[str]:
    """None when the result file ``path`` was written by job ``job_id`` for configuration
    ``digest`` (:func:`stamp`); else what is there instead, in words."""
    if not path.exists():
        return f"no {path.name}"
    try:
        mark = read_json_object(path, "result file").get("slurm")
    except CmatError as err:
        return str(err)
    if not isinstance(mark, dict):
        return f"the {path.name} there is not a SLURM job's: a local or earlier run's"
    if str(mark.get("job_id")) != str(job_id):
        return f"the {path.name} there is job {mark.get('job_id')}'s"
    if mark.get("digest") != digest:
        return f"the {path.name} there is of another configuration"
    return None


def run_slurm_job(job: Job) -> None:
    """What every SLURM job runs: the job (prepared here: a run's resume or restart; under
    torchrun when it is distributed over several GPUs) holding its directory's lock, then its
    result file stamped with this job's id and digest; a refusal or error also goes to ``run.log``."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    try:
        with RunLock(job.run_dir, f"SLURM job {job_id}"):
            job = job.prepare(job) if job.prepare else job
            if processes(job) > 1:
                code = subprocess.call(worker_command(write_job_file(job), processes(job)))
                if code != 0:
                    raise CmatError(f"torchrun exited with {code}; see {job.run_dir}/run.log")
            else:
                execute(job)
            stamp(job.result_path, job_id, job.digest)
    except CmatError as err:
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(job.run_dir) / "run.log", "a") as fh:
            fh.write(f"error: {err}\n")
        raise


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


def cancel_and_wait(job_id: str, timeout: float = CANCEL_WAIT_S, poll: float = 1.0) -> None:
    """``scancel`` the job and wait until squeue no longer lists it as active: a cancelled job
    may go on writing for KillWait seconds, so its directory is reused only after."""
    subprocess.run(["scancel", job_id], capture_output=True)
    end = time.time() + timeout
    while (state := queue_states().get(job_id)) in ACTIVE:
        if time.time() > end:
            raise CmatError(f"job {job_id} was cancelled but is still {state} after {timeout:.0f} s; its run "
                            "directory is not reused while it may write: run the same command once squeue no "
                            "longer lists it")
        time.sleep(poll)


def read_record(path: Path) -> dict:
    """``OUT/slurm_jobs.json``: name → ``{"job_id", "digest", "after", "submitted"}`` ({} when
    absent). It says which jobs may still write, so an unreadable one is one line, not a guess."""
    if not path.exists():
        return {}
    hint = "; check squeue for jobs still writing into this directory, cancel them, then delete the file"
    try:
        record = read_json_object(path, "record of submitted SLURM jobs")
    except CmatError as err:
        raise CmatError(f"{err}{hint}") from None
    for name, entry in record.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("job_id"), (str, int))
                and isinstance(entry.get("digest"), str) and isinstance(entry.get("after", []), list)):
            raise CmatError(f"{path} is not a valid record of submitted SLURM jobs: entry {name!r} lacks a job id "
                            f"or digest{hint}")
    return record


def live_jobs(out: Path) -> list:
    """``(name, job id)`` of the jobs ``OUT/slurm_jobs.json`` records that squeue still lists as
    queued or running (none when this machine has no SLURM client)."""
    record = read_record(Path(out) / "slurm_jobs.json")
    if not record or shutil.which("squeue") is None:
        return []
    queue = queue_states()
    return [(name, str(e["job_id"])) for name, e in record.items() if queue.get(str(e["job_id"])) in ACTIVE]


def refuse_live_slurm_jobs(out, what: str) -> None:
    """One line when ``OUT/slurm_jobs.json`` records jobs still queued or running: a ``what``
    (a local bench or study) on the same directory would train their runs beside them."""
    live = live_jobs(Path(out))
    if live:
        raise CmatError(f"{out} has {len(live)} SLURM job(s) still queued or running "
                        f"({', '.join(f'{n}: job {i}' for n, i in live)}); a {what} would write the same run "
                        "directories: collect them with the same command and --launcher slurm, or scancel them first")


def run_slurm(jobs: list, out: Path, opts: SlurmOptions, table: StatusTable, wait: bool = True,
              dry_run: bool = False, say=print, poll: float = 3.0) -> dict:
    """Submit (or find already submitted) every job; with ``wait`` poll until all left the queue.
    Returns name → "done" | "failed" | "skipped" | "queued" (not waited for) | "dry-run"."""
    if not dry_run and shutil.which("sbatch") is None:
        raise CmatError("--launcher slurm: sbatch is not on PATH (no SLURM client here); see docs/cluster.md")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise CmatError("--launcher slurm needs submitit: pip install 'cmat[slurm]'") from None
    jobs = [replace(j, threads=opts.cpus_per_run, gpus=tuple(range(opts.gpus_per_run))) for j in jobs]
    ids = submit_jobs(jobs, out, opts, table, dry_run, say)
    if dry_run:
        return {j.name: "dry-run" for j in jobs}
    return poll_jobs(jobs, ids, opts, table, wait, poll)


def sbatch_line(job: Job, params: dict) -> str:
    return ("[dry run] " + job.name + ": sbatch "
            + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in params.items() if k != "additional_parameters")
            + "".join(f" --{k}={v}" for k, v in params.get("additional_parameters", {}).items())
            + (f" (after {', '.join(job.deps)})" if job.deps else "") + f" → {job.run_dir}")


def submit_jobs(jobs: list, out: Path, opts: SlurmOptions, table: StatusTable, dry_run: bool, say) -> dict:
    """Submit every job not already queued or running for its configuration (a superseded job
    is cancelled and awaited first); name → job id, recorded in ``OUT/slurm_jobs.json``."""
    import submitit

    record_path = out / "slurm_jobs.json"
    record = read_record(record_path)
    queue = {} if dry_run else queue_states()
    ids: dict = {}
    names = {u.name for u in jobs}
    for job in jobs:  # dependency order: a job's deps come before it (the caller's order)
        old = record.get(job.name)
        deps = [ids[d] for d in job.deps if d in names and d in ids]
        active = old is not None and queue.get(str(old["job_id"])) in ACTIVE
        # still queued or running, for this configuration, after every dependency as it is now
        # (a dependency that has finished since is no longer a job here; one resubmitted has a new id)
        if active and old.get("digest") == job.digest and all(d in old.get("after", []) for d in deps):
            ids[job.name] = str(old["job_id"])
            table.set(job.name, "queued", f"already submitted: job {ids[job.name]}")
            continue
        if active and not dry_run:  # superseded: never two jobs writing one run directory
            say(f"[{job.name}] job {old['job_id']} is superseded (configuration or dependencies changed); "
                "cancelling it and waiting until it has left the queue")
            cancel_and_wait(str(old["job_id"]))
        elif old is not None and not dry_run:
            problem = result_problem(job.result_path, str(old["job_id"]), str(old.get("digest")))
            say(f"[{job.name}] job {old['job_id']} ended without its result ({problem}; "
                f"{last_line(Path(job.run_dir) / 'run.log') or 'see ' + job.run_dir + '/slurm/'}); resubmitting")
        params = opts.sbatch_parameters(job.name, "afterok:" + ":".join(deps) if deps else None)
        if dry_run:
            say(sbatch_line(job, params))
            ids[job.name] = f"<{job.name}>"
            continue
        executor = submitit.SlurmExecutor(folder=Path(job.run_dir) / "slurm")
        executor.update_parameters(**params)
        try:
            ids[job.name] = str(executor.submit(run_slurm_job, job).job_id)
        except Exception as err:  # sbatch refused it (partition, account, time, ...): say so in one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            raise CmatError(f"sbatch refused job {job.name}: {first}") from None
        record[job.name] = {"job_id": ids[job.name], "digest": job.digest, "after": deps, "submitted": time.time()}
        atomic_write_text(record_path, json.dumps(record, indent=1))
        table.set(job.name, "queued", f"job {ids[job.name]}" + (f", after afterok:{':'.join(deps)}" if deps else ""))
    return ids


def poll_jobs(jobs: list, ids: dict, opts: SlurmOptions, table: StatusTable, wait: bool, poll: float) -> dict:
    """Follow the submitted jobs in squeue; a job that left the queue is done only when its
    result file carries its id and digest (after up to ``result_wait_s`` for it to appear)."""
    final = ("done", "failed", "skipped")
    states = {u.name: "queued" for u in jobs}
    gone: dict = {}  # name -> when it was first seen out of the queue without its result
    while True:
        queue = queue_states()
        for job in jobs:
            job_id = ids[job.name]
            if states[job.name] in final:
                continue
            s = queue.get(job_id)
            if s in ACTIVE:
                if s == "RUNNING":
                    states[job.name] = "running"
                    table.set(job.name, "running", f"job {job_id}")
                continue
            problem = result_problem(job.result_path, job_id, job.digest)
            if problem and time.time() - gone.setdefault(job.name, time.time()) < opts.result_wait_s:
                continue  # left the queue; its result may still be on its way
            states[job.name] = "failed" if problem else "done"
            log = Path(job.run_dir) / "run.log"
            table.set(job.name, states[job.name], (job.describe(job) if job.describe else "") if not problem else
                      f"job {job_id} left the queue without its result ({problem}); "
                      f"{last_line(log) or 'no run.log'} (logs: {job.run_dir}/slurm/)")
        for job in jobs:  # a job whose dependency failed would pend forever
            if states[job.name] == "queued" and any(states.get(d) in ("failed", "skipped") for d in job.deps):
                subprocess.run(["scancel", ids[job.name]], capture_output=True)
                states[job.name] = "skipped"
                table.set(job.name, "skipped", f"needs {', '.join(job.deps)}, which did not finish")
        if not wait or all(s in final for s in states.values()):
            return states
        table.draw()
        time.sleep(poll)
