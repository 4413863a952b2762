"""Every writer of a run directory holds its lock (:class:`cmat.rundir.RunLock`): a bench for
the runs its workers train, a transfer study for its directory, sources and cells, a SLURM job
for its run. Each refusal is one line naming the holder, and nothing is written."""
import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from cmat.cli import main
from cmat.config import to_yaml
from cmat.errors import CmatError
from cmat.launch.jobs import run_job_for
from cmat.launch.slurm import result_problem, run_slurm_job
from cmat.rundir import RunLock, lock_runs
from tests.helpers import quick_config

# one method, one seed, the smallest toy run: a few seconds
RUN = ["--tasks", "toy-2task", "--epochs", "1", "--train-samples", "64", "--eval-samples", "8", "--attacks",
       "clean,pgd10", "--set", "train.val_attack_samples=8", "--no-progress"]
BENCH = ["bench", *RUN, "--methods", "at-finetune", "--seeds", "0"]


def one_line_refusal(res, holder: str) -> str:
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert "is in use by another " + holder in lines[0], lines[0]
    return lines[0]


def epoch_rows(run_dir) -> int:
    return sum('"kind": "epoch"' in ln for ln in (run_dir / "log.jsonl").read_text().splitlines())


def test_cmat_run_on_a_run_a_bench_is_training_is_refused(tmp_path):
    """The issue's reproduction: ``cmat run --out B/at-finetune-s0`` during ``cmat bench --jobs 2
    --out B`` was not refused, and log.jsonl held both runs' epochs."""
    out = tmp_path / "B"
    bench = subprocess.Popen([sys.executable, "-m", "cmat", *BENCH, "--epochs", "3", "--jobs", "2", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + 120
        while not (out / "at-finetune-s0" / "job.pkl").exists():
            assert bench.poll() is None and time.time() < end, "the bench did not start its run"
            time.sleep(0.05)
        res = CliRunner().invoke(main, ["run", *RUN, "--epochs", "3", "--method", "at-finetune",
                                        "--out", str(out / "at-finetune-s0")])
        line = one_line_refusal(res, "cmat bench")
        assert f"PID {bench.pid}" in line
    finally:
        assert bench.wait(timeout=300) == 0, bench.stderr.read()
    assert epoch_rows(out / "at-finetune-s0") == 2 * 3  # one run's: 2 tasks × 3 epochs, no second writer


def test_a_bench_is_refused_while_cmat_run_holds_one_of_its_runs(tmp_path):
    out = tmp_path / "B"
    for jobs in ("1", "2"):
        with RunLock(out / "at-finetune-s0", "cmat run"):
            res = CliRunner().invoke(main, [*BENCH, "--out", str(out), "--jobs", jobs])
        one_line_refusal(res, "cmat run")
        assert not (out / "at-finetune-s0" / "results.json").exists() and not (out / "bench.csv").exists()


def test_lock_runs_takes_all_or_none(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    with RunLock(dirs[1], "cmat run"):
        with pytest.raises(CmatError, match="b is in use by another cmat run"):
            lock_runs(dirs, "cmat bench")
        with RunLock(dirs[0], "cmat run"):  # the first was released when the second was refused
            pass
    with lock_runs(dirs, "cmat bench"):
        with pytest.raises(CmatError, match="in use by another cmat bench"):
            RunLock(dirs[2], "cmat run").__enter__()
    with RunLock(dirs[2], "cmat run"):  # all released
        pass


def test_transfer_study_locks_its_out_and_every_cell(tmp_path):
    from cmat.transfer_study import run_study

    kw = {"strategies": ["linear"], "verify_samples": 1, "verify_iters": 1, "progress": False, "say": lambda _: None}
    out = tmp_path / "study"
    with RunLock(out, "cmat transfer-study"):
        with pytest.raises(CmatError, match="study is in use by another cmat transfer-study"):
            run_study(quick_config(method="at-individual"), out, **kw)
    with RunLock(out / "cells" / "none-scratch-pgd", "cmat run"):
        res = CliRunner().invoke(main, ["transfer-study", "--tasks", "toy-2task", "--epochs", "1", "--eval-samples",
                                        "8", "--no-progress", "--out", str(out), "--strategies", "linear",
                                        "--verify-samples", "1"])
    one_line_refusal(res, "cmat run")
    assert not (out / "sources" / "pgd" / "results.json").exists()  # refused before anything trained


def test_a_slurm_job_holds_its_run_and_stamps_its_result(tmp_path, monkeypatch):
    """What every SLURM job runs (:func:`run_slurm_job`), called here as the job calls it: refused
    in one line (also in run.log) while another writer holds the run; else its results.json
    carries this job's id and the configuration digest, which is what makes it done."""
    cfg = quick_config(method="at-finetune", epochs=1, train={"val_attack_samples": 8},
                       eval={"attacks": ["clean"], "samples": 8}, max_tasks=1)
    job = run_job_for("at-finetune-s0", tmp_path / "r", to_yaml(cfg), "at-finetune s0")
    digest, result = job.digest, tmp_path / "r" / "results.json"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with RunLock(job.run_dir, "cmat run"):
        with pytest.raises(CmatError, match="in use by another cmat run"):
            run_slurm_job(job)
    assert "error:" in (tmp_path / "r" / "run.log").read_text() and not result.exists()
    run_slurm_job(job)
    assert json.loads(result.read_text())["slurm"] == {"job_id": "4242", "digest": digest}
    assert result_problem(result, "4242", digest) is None
    assert "job 4242's" in result_problem(result, "4243", digest)  # another job's result is not this one's
    assert "another configuration" in result_problem(result, "4242", "0" * 16)
    with RunLock(job.run_dir, "cmat run"):  # the job released it
        pass
