"""The command line: one-line errors with non-zero exits, `cmat tasks`, eval of a finished run."""
import json
import subprocess
import sys


from cmat.tasks.registry import SEQUENCES
from tests.helpers import invoke, one_line_error






def test_tasks_json_lists_every_sequence():
    res = invoke("tasks", "--json")
    assert res.exit_code == 0
    names = [s["name"] for s in json.loads(res.output)]
    assert names == list(SEQUENCES)  # every registered sequence, once, in registry order
    assert {"cifar100-20split", "cifar100-10split", "cifar10-5split", "mnist-5split", "emnist-balanced",
            "cifar10-cifar100", "mnist-emnist", "digits-5split", "digits-2split", "toy-2task"} <= set(names)
    show = invoke("tasks", "show", "cifar100-20split", "--json")
    assert show.exit_code == 0 and json.loads(show.output)["num_tasks"] == 20
    one_line_error(invoke("tasks", "show", "imagenet"))


def test_missing_dataset_is_one_line_from_the_real_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cmat", "run", "--tasks", "cifar100-20split",
                           "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "nodata" in err[0] and "--download" in err[0]
    assert not (tmp_path / "o" / "results.json").exists()


def test_bad_flags_are_one_line_before_any_output(tmp_path):
    out = tmp_path / "o"
    line = one_line_error(invoke("run", "--tasks", "toy-2task", "--attacks", "clean,pgd-banana", "--out", str(out)))
    assert "banana" in line
    one_line_error(invoke("run", "--tasks", "toy-2task", "--eps", "-1", "--out", str(out)))
    one_line_error(invoke("run", "--tasks", "toy-2task", "--method", "nope", "--out", str(out)))
    one_line_error(invoke("run", "--tasks", "toy-2task", "--objective", "nope", "--out", str(out)))
    one_line_error(invoke("run", "--tasks", "no-such-seq", "--out", str(out)))
    assert not (out / "results.json").exists()


def test_eval_and_inspect_a_finished_run(individual_run):
    out, res = individual_run
    ev = invoke("eval", str(out), "--attacks", "clean", "--json")
    assert ev.exit_code == 0, ev.output
    report = json.loads(ev.output)
    assert [t["clean"]["acc"] for t in report["tasks"]] == res["acc"]["clean"][-1]
    ins = invoke("inspect", str(out))
    assert ins.exit_code == 0 and "network 1" in ins.output
    pl = invoke("plot", str(out), "--samples", "50")
    assert pl.exit_code == 0, pl.output
    for name in ("matrix_at-individual_clean", "tasks_bars", "acc_vs_eps", "acc_vs_steps"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000


def test_eval_of_a_foreign_dir_is_one_line(tmp_path):
    line = one_line_error(invoke("eval", str(tmp_path)))
    assert "no store" in line


def test_refuses_to_overwrite_a_finished_run(individual_run):
    out, _ = individual_run
    line = one_line_error(invoke("run", "--tasks", "toy-2task", "--out", str(out)))
    assert "--force" in line
