"""Up to N jobs at once on this machine, each in its own worker process (``job.pkl``).

- **Threads**: each worker gets ``cores // N`` intra-op threads unless its configuration pins
  fewer (the digits and toy presets pin one).
- **GPUs**: with CUDA devices visible, each run gets ``gpus_per_run`` of them
  (``CUDA_VISIBLE_DEVICES``), so at most ``devices // gpus_per_run`` run at once; a run with
  several starts torchrun (one process per GPU, the run's distributed path).
- **Dependencies**: a job starts once every job it names in ``deps`` has finished; if one of
  them failed it is ``skipped``.
- **One writer per run**: the bench or study that calls this holds every job directory's lock
  (:func:`cmat.rundir.lock_runs`) for as long as it runs; its workers write under it.
- **Nothing left behind**: every worker is started with ``PR_SET_PDEATHSIG`` = SIGKILL, so the
  kernel kills it when the launcher dies, ``kill -9`` included; on Ctrl-C or an error the
  launcher kills its workers before it re-raises.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from cmat.errors import CmatError
from cmat.launch.jobs import Job, die_with_parent, processes, worker_command, write_job_file
from cmat.launch.table import StatusTable


def visible_gpus() -> list:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def threads_per_run(n_jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // n_jobs)


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1][:200]


def run_local(jobs: list, n_jobs: int, table: StatusTable, gpus_per_run: int = 1, poll: float = 0.5) -> dict:
    """Run ``jobs`` (dependency order not required) with up to ``n_jobs`` at once; returns
    name → "done" | "failed" | "skipped". A job is done when its worker exited 0 and left its
    result file. Jobs' lines go to their ``run.log``."""
    if n_jobs < 1:
        raise CmatError(f"--jobs must be ≥ 1, got {n_jobs}")
    gpus = visible_gpus()
    free_gpus = list(gpus)
    slots = n_jobs
    if gpus:
        if gpus_per_run < 1 or gpus_per_run > len(gpus):
            raise CmatError(f"--gpus-per-run must be in 1..{len(gpus)} (CUDA devices visible), got {gpus_per_run}")
        slots = min(n_jobs, len(gpus) // gpus_per_run)
    threads = threads_per_run(slots)
    names = {j.name for j in jobs}
    state = {j.name: "queued" for j in jobs}
    waiting = list(jobs)
    running: dict = {}  # name -> (Popen, gpus, log handle)
    try:
        while waiting or running:
            for name, (proc, held, fh) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                fh.close()
                free_gpus.extend(held)
                del running[name]
                state[name] = finished(next(j for j in jobs if j.name == name), code, table)
            for job in list(waiting):
                deps = [d for d in job.deps if d in names]
                if any(state[d] in ("failed", "skipped") for d in deps):
                    waiting.remove(job)
                    state[job.name] = "skipped"
                    table.set(job.name, "skipped", f"needs {', '.join(deps)}, which did not finish")
                    continue
                if any(state[d] != "done" for d in deps):
                    table.set(job.name, "waiting", f"for {', '.join(d for d in deps if state[d] != 'done')}")
                    continue
                if len(running) >= slots:
                    break
                held = [free_gpus.pop(0) for _ in range(gpus_per_run)] if gpus else []
                running[job.name] = start(job, threads, held)
                waiting.remove(job)
                state[job.name] = "running"
                table.set(job.name, "running")
            table.draw()
            time.sleep(poll)
    except BaseException:
        for proc, _, fh in running.values():
            proc.kill()
            proc.wait()
            fh.close()
        raise
    return state


def finished(job: Job, code: int, table: StatusTable) -> str:
    """"done" when the worker exited 0 and left the job's result file, else "failed"; the
    table gets the job's own line, or the failure's last line of ``run.log``."""
    log = Path(job.run_dir) / "run.log"
    if code == 0 and job.result_path.exists():
        table.set(job.name, "done", job.describe(job) if job.describe else "")
        return "done"
    table.set(job.name, "failed", f"{last_line(log)} (log: {log})")
    return "failed"


def start(job: Job, threads: int, gpus: list) -> tuple:
    """Prepare the job (a run's resume or restart), write ``job.pkl`` and start its worker."""
    job = replace(job, threads=threads, gpus=tuple(gpus))
    if job.prepare:
        job = job.prepare(job)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job_file = write_job_file(job)
    env = dict(os.environ)
    if gpus:  # indices into this process's visible devices (which may be a subset, or UUIDs)
        parent = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(parent[g] if g < len(parent) else str(g) for g in gpus)
    fh = open(run_dir / "run.log", "a")
    proc = subprocess.Popen(worker_command(job_file, processes(job)), stdout=fh, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent)
    return proc, gpus, fh
