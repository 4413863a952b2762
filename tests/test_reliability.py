"""Nothing lost, one line for every bad input: configuration validation before any output,
--force that keeps a finished run until the new one finishes, one writer per run directory."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from cmat.rundir import RunLock
from tests.helpers import invoke, one_line_error



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


# ----------------------------------------------------------------------------- the store

import h5py  # noqa: E402
import numpy as np  # noqa: E402

import cmat  # noqa: E402
from cmat.errors import CmatError  # noqa: E402


@pytest.fixture
def store(tmp_path, individual_run):
    src, _ = individual_run
    path = tmp_path / "store.h5"
    shutil.copy(src / "store.h5", path)
    cmat.load(path)  # the untouched copy loads
    return path


def _first_weight(f):
    g = f["networks/0/state"]
    return "networks/0/state/" + sorted(g)[0]


TAMPER = {
    "config byte": lambda f: f.attrs.__setitem__("config", f.attrs["config"].replace("eps: 0.0313", "eps: 0.9313")),
    "swapped heads": lambda f: (f["tasks/0"].attrs.__setitem__("network", 1),
                                f["tasks/1"].attrs.__setitem__("network", 0)),
    "task_names cut": lambda f: f.attrs.__setitem__("task_names", '["toy-a"]'),
    "one weight": lambda f: f[_first_weight(f)].__setitem__(0, f[_first_weight(f)][0] + 1e-6),
    "new dataset": lambda f: f.create_dataset("extra", data=np.zeros(3)),
    "version text": lambda f: f.attrs.__setitem__("version", "abc"),
}


@pytest.mark.parametrize("name", list(TAMPER))
def test_a_changed_byte_anywhere_is_refused(store, name):
    with h5py.File(store, "r+") as f:
        TAMPER[name](f)
    with pytest.raises(CmatError) as err:
        cmat.load(store)
    assert "\n" not in str(err.value)


def test_links_vlen_and_huge_datasets_are_refused_before_reading(store, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("w", data=np.zeros(10, np.float32))
    cases = {
        "ExternalLink": lambda f, k: f.__setitem__(k, h5py.ExternalLink(str(other), "w")),
        "SoftLink": lambda f, k: f.__setitem__(k, h5py.SoftLink("/nowhere")),
        "dtype": lambda f, k: f.create_dataset(k, data=["a", "bc"], dtype=h5py.string_dtype()),
        "elements": lambda f, k: f.create_dataset(k, shape=(10 ** 10,), dtype="f4", chunks=(1024,)),
    }
    for needle, make in cases.items():
        path = tmp_path / f"{needle}.h5"
        shutil.copy(store, path)
        with h5py.File(path, "r+") as f:
            key = _first_weight(f)
            del f[key]
            make(f, key)
        with pytest.raises(CmatError, match=needle):
            cmat.load(path)


def test_failed_store_write_is_one_line_and_leaves_no_temporary(tmp_path, individual_run, monkeypatch):
    from cmat import store as store_mod

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    src, _ = individual_run
    run = cmat.load(src)

    class Fake:
        decisions = {}

        def networks(self):
            return run.networks

        def task_slots(self):
            return run.slots

    seq = cmat.get_tasks("toy-2task")
    monkeypatch.setattr(os, "replace", full_disk)  # the temporary is written, the rename fails
    with pytest.raises(CmatError, match="No space left on device"):
        store_mod.save_run(tmp_path / "store.h5", Fake(), seq, run.config)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_planted_cifar_pickle_cannot_run_code(tmp_path):
    import pickle

    from cmat import tasks
    from tests import fakedata

    fakedata.write_cifar100(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(CmatError, match="refusing to load global"):
        tasks.get_tasks("cifar100-20split", data_root=tmp_path)
    assert not marker.exists()


def test_bench_refuses_a_bad_method_option_before_training(tmp_path):
    line = one_line_error(invoke("bench", "--tasks", "toy-2task", "--methods", "at-individual,packnet",
                                 "--out", str(tmp_path / "b"), "--set", "method_options.prune_fraction=abc"))
    assert "prune_fraction" in line and not (tmp_path / "b" / "at-individual-s0").exists()


def test_damaged_checkpoint_state_is_one_line(tmp_path, monkeypatch):
    from cmat.baselines.at_baselines import ATIndividual
    from cmat import store as store_mod
    from cmat.engine import Run
    from tests.helpers import interrupt_before_second_task, quick_config

    cfg = quick_config(method="at-individual", epochs=1, eval={"attacks": ["clean"], "samples": 20})
    out = tmp_path / "run"
    interrupt_before_second_task(monkeypatch, ATIndividual, cfg, out)
    good = out / "checkpoint.h5"
    for damage in ({"completed": 99}, {"acc": {"clean": [[0.5, 0.5]]}}, {"global_step": "x"}, "rng"):
        broken = tmp_path / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(out, broken)
        with h5py.File(broken / "checkpoint.h5", "r+") as f:
            if damage == "rng":
                del f["resume/rng"]
                store_mod.write_array(f["resume"], "rng", np.zeros(3, np.uint8))
            else:
                state = json.loads(f["resume"].attrs["state"])
                state.update(damage)
                f["resume"].attrs["state"] = json.dumps(state)
            store_mod.sign(f)  # a well-formed file whose content is wrong: the checks, not the checksum
        with pytest.raises(CmatError, match="corrupt") as err:
            Run(cfg, broken, progress=False, verbose=False, resume=True).execute()
        assert "\n" not in str(err.value)
    assert good.exists()
