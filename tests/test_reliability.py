"""Nothing lost, one line for every bad input: configuration validation before any output,
--force that keeps a finished run until the new one finishes, one writer per run directory."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cmat.cli import main
from cmat.rundir import RunLock


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def one_line_error(result):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("cmat: error:")
    return lines[0]


BAD = [
    (["--eps", "8/0"], "threat.eps"),
    (["--seed", "-1"], "seed"),
    (["--seed", "12345678901234567890123"], "seed"),
    (["--set", "model.width=.nan"], "model.width"),
    (["--set", "model.width=1e300"], "model.width"),
    (["--set", "train.lr=-1"], "train.lr"),
    (["--set", "train.lr=.nan"], "train.lr"),
    (["--arch", "bogus"], "model.arch"),
    (["--set", "eval.batch_size=0"], "eval.batch_size"),
    (["--set", "train.epochs=1.0e+400"], "train.epochs"),
    (["--method", "cmat", "--set", "method_options.prune_levels=abc"], "prune_levels"),
    (["--method", "packnet", "--set", "method_options.prune_fraction=2"], "prune_fraction"),
    (["--method", "anp-vs", "--set", "method_options.kl_weight=x"], "kl_weight"),
]


@pytest.mark.parametrize("args,key", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_and_write_nothing(tmp_path, args, key):
    out = tmp_path / "o"
    line = one_line_error(invoke("run", "--tasks", "toy-2task", "--out", str(out), "--no-progress", *args))
    assert key in line
    assert not out.exists()


@pytest.mark.parametrize("content,needle", [(b"\xff\xfe not utf-8", "UTF-8"), (b"- a\n- b\n", "mapping"),
                                            (b"train: {epochs: 1.0e+400}\n", "train.epochs"),
                                            (b"train: [1, 2\n", "YAML")])
def test_bad_config_files_are_one_line(tmp_path, content, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    line = one_line_error(invoke("run", "--config", str(cfg), "--out", str(tmp_path / "o")))
    assert needle in line and not (tmp_path / "o").exists()


@pytest.fixture
def finished(tmp_path, individual_run):
    src, _ = individual_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out, {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_force_keeps_the_finished_run_when_the_new_one_is_refused(finished):
    out, before = finished
    one_line_error(invoke("run", "--tasks", "toy-2task", "--out", str(out), "--force", "--method", "bogus"))
    one_line_error(invoke("run", "--tasks", "toy-2task", "--out", str(out), "--force", "--arch", "bogus"))
    line = one_line_error(invoke("run", "--tasks", "toy-2task", "--out", str(out), "--force", "--resume"))
    assert "contradict" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == [".run.lock", "run"]  # no staging left


def test_force_replaces_only_once_the_new_run_finished(finished):
    out, before = finished
    res = invoke("run", "--tasks", "toy-2task", "--out", str(out), "--force", "--method", "at-finetune",
                 "--epochs", "1", "--attacks", "clean", "--eval-samples", "20", "--no-progress")
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "at-finetune" and (out / "eval.h5").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [".run.lock", "run"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cmat.rundir import RunLock\n"
        f"with RunLock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line_error(invoke("run", "--tasks", "toy-2task", "--out", str(out), "--epochs", "1"))
        assert f"PID {holder.pid}" in line and "in use" in line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out):  # released when its holder died
        pass
    assert os.path.exists(tmp_path / ".busy.lock")
