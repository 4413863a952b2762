"""``cmat bench --launcher slurm`` on a real SLURM cluster (``scripts/slurm_local.sh start``;
.ci/run starts one): one SLURM job per run, the same bench.csv as the local bench, dependencies
as ``afterok``, ``--no-wait`` then the same command collects; a job is done only when its own
job wrote its result (a cancelled pending job over an old result is resubmitted, never done), a
superseded job has left the queue before its replacement starts, and a local bench is refused
while SLURM jobs of the same --out are queued. Without a cluster these tests skip, unless
``CMAT_REQUIRE_SLURM=1`` (CI) makes that a failure."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from cmat.cli import main
from tests.helpers import TOY_BENCH, table

pytestmark = pytest.mark.slurm


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and any(s.strip() in ("idle", "mixed", "allocated") for s in out.stdout.split())


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not cluster_up():
        if os.environ.get("CMAT_REQUIRE_SLURM") == "1":
            pytest.fail("CMAT_REQUIRE_SLURM=1 but no SLURM node is up (scripts/slurm_local.sh start)")
        pytest.skip("no SLURM cluster here (scripts/slurm_local.sh start)")


def test_slurm_bench_equals_the_local_bench_one_job_per_run(tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    res = CliRunner().invoke(main, [*TOY_BENCH, "--out", str(local)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*TOY_BENCH, "--out", str(slurm), "--launcher", "slurm", "--time", "10"])
    assert res.exit_code == 0, res.output
    assert table(slurm / "bench.csv") == table(local / "bench.csv")
    jobs = json.loads((slurm / "slurm_jobs.json").read_text())
    assert sorted(jobs) == ["at-finetune-s0", "packnet-s0"]
    assert len({j["job_id"] for j in jobs.values()}) == 2
    for name, j in jobs.items():  # the job's logs in its run directory
        assert (slurm / name / "slurm" / f"{j['job_id']}_0_log.out").exists()
        assert "task 2/2" in (slurm / name / "run.log").read_text()
    again = CliRunner().invoke(main, [*TOY_BENCH, "--out", str(slurm), "--launcher", "slurm"])
    assert again.exit_code == 0 and again.output.count("reusing the finished run") == 2


def test_no_wait_submits_with_afterok_dependencies_and_the_same_command_collects(tmp_path):
    out = tmp_path / "b"
    cmd = ["bench", "--tasks", "toy-2task", "--methods", "at-individual,cmat", "--seeds", "0", "--epochs", "1",
           "--train-samples", "192", "--eval-samples", "16", "--attacks", "clean,pgd10", "--no-progress",
           "--set", "train.val_attack_samples=16", "--set", "method_options.prune_levels=1",
           "--set", "method_options.compact_epochs=1", "--out", str(out), "--launcher", "slurm"]
    res = CliRunner().invoke(main, [*cmd, "--no-wait"])
    assert res.exit_code == 0 and "run the same command again to collect" in res.output, res.output
    jobs = json.loads((out / "slurm_jobs.json").read_text())
    ind, cm = jobs["at-individual-s0"]["job_id"], jobs["cmat-s0"]["job_id"]
    script = (out / "cmat-s0" / "slurm" / f"{cm}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{ind}" in script
    res = CliRunner().invoke(main, cmd)  # collects: nothing resubmitted
    assert res.exit_code == 0, res.output
    assert json.loads((out / "slurm_jobs.json").read_text()) == jobs
    assert (out / "bench.csv").exists()
    assert "already submitted" in res.output or res.output.count("reusing the finished run") == 2


def test_transfer_study_through_slurm_equals_the_local_study(tmp_path):
    """Each source and cell a SLURM job, every cell ``afterok`` its source; the collected study
    equals the one run in this process."""
    from cmat.launch import LaunchOptions, SlurmOptions
    from cmat.transfer_study import run_study
    from tests.helpers import tiny_config

    kw = {"strategies": ["linear"], "verify_samples": 2, "verify_iters": 2, "progress": False, "say": lambda _: None}
    local = run_study(tiny_config(), tmp_path / "local", jobs=1, **kw)
    opts = LaunchOptions(launcher="slurm", slurm=SlurmOptions(time_min=10))
    slurm = run_study(tiny_config(), tmp_path / "slurm", launch_opts=opts, **kw)
    strip = [{k: v for k, v in r.items() if k != "train_seconds"} for r in local["rows"]]
    assert [{k: v for k, v in r.items() if k != "train_seconds"} for r in slurm["rows"]] == strip
    jobs = json.loads((tmp_path / "slurm" / "slurm_jobs.json").read_text())
    assert len(jobs) == 8 and len({j["job_id"] for j in jobs.values()}) == 8  # 2 sources + 6 cells
    for name, j in jobs.items():
        if name.startswith(("standard-", "pgd-")):
            assert j["after"] == [jobs[f"source-{name.split('-')[0]}"]["job_id"]]


ONE = ["bench", "--tasks", "toy-2task", "--methods", "at-finetune", "--seeds", "0", "--train-samples", "64",
       "--eval-samples", "8", "--attacks", "clean,pgd10", "--set", "train.val_attack_samples=8", "--no-progress"]


def squeue_state(job_id: str):
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip() or None  # squeue no longer lists it (or never did)


def recorded_job(out) -> str:
    return json.loads((out / "slurm_jobs.json").read_text())["at-finetune-s0"]["job_id"]


@pytest.fixture
def cancel_jobs():
    """Job ids a test started; cancelled when it ends, whatever happened."""
    ids: list = []
    yield ids
    for job_id in ids:
        subprocess.run(["scancel", job_id], capture_output=True)


def test_a_cancelled_pending_job_over_an_old_result_is_reported_and_resubmitted_never_done(tmp_path, cancel_jobs):
    """The issue's reproduction: a toy bench at 1 epoch, then at 2 epochs through SLURM; the job
    left the queue without running and the old results.json counted as its result (bench.md
    said 2 epochs, the run's config.yaml 1). Now: failed, reported, resubmitted by the same command."""
    out = tmp_path / "b"
    res = CliRunner().invoke(main, [*ONE, "--out", str(out), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    old_md = (out / "bench.md").read_text()
    pend = tmp_path / "pend.yaml"  # the job pends for an hour: nothing runs it unless resubmitted
    pend.write_text("slurm: {extra: {begin: now+1hour}, result_wait_s: 1}\n")
    two = [*ONE, "--out", str(out), "--epochs", "2", "--launcher", "slurm", "--time", "10"]
    res = CliRunner().invoke(main, [*two, "--config", str(pend), "--no-wait"])
    assert res.exit_code == 0, res.output
    old = recorded_job(out)
    cancel_jobs.append(old)
    assert squeue_state(old) == "PENDING"
    # a local bench on the same --out while that job is queued: refused in one line
    res = CliRunner().invoke(main, [*ONE, "--out", str(out), "--epochs", "2"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"SLURM job(s) still queued or running (at-finetune-s0: job {old})" in res.output
    # the collecting command waits for the job; it is cancelled while pending, under it
    proc = subprocess.Popen([sys.executable, "-m", "cmat", *two, "--config", str(pend)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = ""
    for line in proc.stdout:
        seen += line
        if f"already submitted: job {old}" in line:
            subprocess.run(["scancel", old], check=True)
            break
    seen += proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "did not finish: at-finetune-s0" in seen, seen
    assert f"job {old} left the queue without its result (the results.json there is not a SLURM job's" in seen
    assert (out / "bench.md").read_text() == old_md  # no table from the old result
    res = CliRunner().invoke(main, two)  # the same command: reported, resubmitted, done by its own job
    assert res.exit_code == 0, res.output
    assert f"job {old} ended without its result" in res.output and "resubmitting" in res.output
    new = recorded_job(out)
    cancel_jobs.append(new)
    record = json.loads((out / "slurm_jobs.json").read_text())["at-finetune-s0"]
    assert new != old and json.loads((out / "at-finetune-s0" / "results.json").read_text())["slurm"] == {
        "job_id": new, "digest": record["digest"]}
    assert "epochs: 2" in (out / "at-finetune-s0" / "config.yaml").read_text()
    assert "2 epochs per task" in (out / "bench.md").read_text()


def test_a_superseded_running_job_has_left_the_queue_before_its_directory_is_reused(tmp_path, cancel_jobs):
    """scancel is not the end of a job: submitit ignores SIGTERM, so a cancelled running job
    writes on for KillWait seconds (COMPLETING). Its replacement is submitted only once squeue
    no longer lists it."""
    out = tmp_path / "b"
    cmd = [*ONE, "--out", str(out), "--launcher", "slurm", "--time", "10", "--no-wait"]
    res = CliRunner().invoke(main, [*cmd, "--epochs", "300"])
    assert res.exit_code == 0, res.output
    old = recorded_job(out)
    cancel_jobs.append(old)
    end = time.time() + 120
    while not (out / "at-finetune-s0" / "progress.json").exists():  # training: submitit's handler is set
        assert time.time() < end and squeue_state(old) in ("PENDING", "RUNNING"), squeue_state(old)
        time.sleep(0.5)
    res = CliRunner().invoke(main, [*cmd, "--epochs", "301"])  # another configuration: supersedes it
    new = recorded_job(out)
    cancel_jobs.append(new)
    assert res.exit_code == 0, res.output
    assert squeue_state(old) is None, "the superseded job was still in the queue when its replacement was submitted"
    assert f"job {old} is superseded" in res.output and new != old
