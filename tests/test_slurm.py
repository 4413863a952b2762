"""``cmat bench --launcher slurm`` on a real SLURM cluster (``scripts/slurm_local.sh start``;
.ci/run starts one): one SLURM job per run, the same bench.csv as the local bench, dependencies
as ``afterok``, ``--no-wait`` then the same command collects. Without a cluster these tests
skip, unless ``CMAT_REQUIRE_SLURM=1`` (CI) makes that a failure."""
import json
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from cmat.cli import main
from tests.test_launch import BENCH, table

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
    res = CliRunner().invoke(main, [*BENCH, "--out", str(local)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*BENCH, "--out", str(slurm), "--launcher", "slurm", "--time", "10"])
    assert res.exit_code == 0, res.output
    assert table(slurm / "bench.csv") == table(local / "bench.csv")
    jobs = json.loads((slurm / "slurm_jobs.json").read_text())
    assert sorted(jobs) == ["at-finetune-s0", "packnet-s0"]
    assert len({j["job_id"] for j in jobs.values()}) == 2
    for name, j in jobs.items():  # the job's logs in its run directory
        assert (slurm / name / "slurm" / f"{j['job_id']}_0_log.out").exists()
        assert "task 2/2" in (slurm / name / "run.log").read_text()
    again = CliRunner().invoke(main, [*BENCH, "--out", str(slurm), "--launcher", "slurm"])
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
    from tests.test_transfer_study import tiny_config

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
