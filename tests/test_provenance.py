"""Every results.json names the code that made it (cmat.provenance)."""
import shutil
import subprocess
from pathlib import Path

import pytest

from cmat.provenance import source_commit

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_records_the_commit_it_ran_from(finetune_run):
    _, res = finetune_run
    prov = res["provenance"]
    assert prov["cmat"] and prov["torch"] and prov["python"]
    if (ROOT / ".git").exists() and shutil.which("git"):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert prov["commit"] == head.strip() and isinstance(prov["dirty"], bool)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_commit_sees_uncommitted_changes_of_tracked_files(tmp_path):
    assert source_commit(tmp_path) == (None, None)  # not a checkout (a wheel install)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source_commit(tmp_path) == (head, False)
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert source_commit(tmp_path) == (head, False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == (head, True)


def test_a_run_records_its_cpu_and_threads_and_its_table_names_them(finetune_run):
    from cmat.provenance import cpu_fingerprint, describe_cpu
    from cmat.report import run_markdown

    _, res = finetune_run
    prov = res["provenance"]
    assert prov["cpu"] == cpu_fingerprint()  # the fixture ran on this machine, in this environment
    assert prov["cpu"]["capability"] and prov["threads"] == 1  # the toy preset's one thread
    assert f"Made on {describe_cpu(prov['cpu'])}, torch {prov['torch']}, 1 thread(s)" in run_markdown(res)


def test_lowering_torchs_kernels_changes_the_fingerprint():
    """The fingerprint is what the bit-exact comparisons key on: a lowered ISA must not match."""
    code = "import json; from cmat.provenance import cpu_fingerprint as f; print(json.dumps(f()))"
    import json
    import os
    import sys

    here = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    low = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env).stdout)
    assert low["capability"] == "DEFAULT" and low["env"] == {"ATEN_CPU_CAPABILITY": "default"}
    assert low != here
