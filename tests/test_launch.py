"""``cmat bench --jobs N``: the same tables as one run after another; kill -9 at any moment, then
the same command, gives the same bench.csv and leaves no worker behind; one bench per --out."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cmat.cli import main
from cmat.launch.table import remaining_seconds
from cmat.rundir import RunLock
from tests.helpers import TOY_BENCH, table





def workers_of(out: Path) -> list:
    """PIDs of live processes whose command line names ``out`` (a bench or its workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if str(out) in cmd and "Z" not in state.split()[1:2]:
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The bench one run after another in this process (``--jobs 1``)."""
    out = tmp_path_factory.mktemp("bench-j1") / "b"
    res = CliRunner().invoke(main, [*TOY_BENCH, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return table(out / "bench.csv")


def start_bench(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cmat", *TOY_BENCH, "--out", str(out), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(out: Path, pattern: str, proc, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if list(out.glob(pattern)):
            return
        assert proc.poll() is None, f"the bench ended before {pattern} appeared"
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear in {timeout} s")


@pytest.mark.slow  # ~1 min: four bench processes; .ci/run runs it with the slow goldens
def test_kill_9_at_several_moments_then_the_same_command_gives_the_same_table(reference, tmp_path):
    out = tmp_path / "b"
    # just started, in the middle of a run (after its first task's checkpoint), one run finished
    for moment in ("*/job.pkl", "*/checkpoint.h5", "*/results.json"):
        proc = start_bench(out)
        wait_for(out, moment, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        end = time.time() + 10
        while workers_of(out) and time.time() < end:
            time.sleep(0.1)
        assert workers_of(out) == [], f"workers still training after kill -9 at {moment}"
        assert not (out / "bench.csv").exists()
    res = CliRunner().invoke(main, [*TOY_BENCH, "--out", str(out), "--jobs", "2"])
    assert res.exit_code == 0, res.output
    assert table(out / "bench.csv") == reference  # = --jobs 1, apart from time columns
    assert "reusing the finished run" in res.output  # the run finished before the last kill
    assert "] running" in res.output and "] done in" in res.output  # one line per change of state
    for run in ("at-finetune-s0", "packnet-s0"):
        log = (out / run / "run.log").read_text()
        assert "task 2/2" in log and "after task 2" in log  # each run's lines in its own log


def test_a_second_bench_on_the_same_out_is_refused(tmp_path):
    out = tmp_path / "b"
    with RunLock(out, "cmat bench"):
        res = CliRunner().invoke(main, [*TOY_BENCH, "--out", str(out), "--jobs", "2"])
    assert res.exit_code == 1 and "in use by another cmat bench" in res.output
    assert "Traceback" not in res.output and not (out / "bench.csv").exists()


def test_launcher_flags_are_checked_in_one_line(tmp_path):
    for extra, msg in ((["--jobs", "0"], "--jobs must be"), (["--no-wait"], "apply to --launcher slurm"),
                       (["--launcher", "slurm", "--time", "0"], "time ≥ 1 min")):
        res = CliRunner().invoke(main, [*TOY_BENCH, "--out", str(tmp_path / "x"), *extra])
        assert res.exit_code != 0 and msg in res.output and "Traceback" not in res.output, res.output


def test_remaining_time_follows_the_finished_tasks_pace():
    now = 1000.0
    assert remaining_seconds({"task": 3, "n_tasks": 5, "elapsed": 60.0, "time": now, "expected_total": 999}, now) == 90
    assert remaining_seconds({"task": 1, "n_tasks": 5, "elapsed": 0.0, "time": now - 10, "expected_total": 50},
                             now) == 40
    assert remaining_seconds({"task": 1, "n_tasks": 5, "elapsed": 0.0, "time": now, "expected_total": None},
                             now) is None
