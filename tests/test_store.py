"""The HDF5 store: bit-exact round trips; corrupt, truncated, foreign, other-version files refused."""
import shutil

import h5py
import pytest
import torch

import cmat
from cmat.errors import CmatError
from cmat.nn import MultiHeadNet
from cmat.store import read_state, write_state


def test_state_round_trip_bit_exact(tmp_path):
    torch.manual_seed(0)
    net = MultiHeadNet("smallcnn", 3, 16, [3, 5], [[0.1, 0.2, 0.3]] * 2, [[0.5, 0.4, 0.3]] * 2, width=0.5)
    net.train()
    net(torch.rand(8, 3, 16, 16), 1)  # move BN running stats and the batch counter
    with h5py.File(tmp_path / "s.h5", "w") as f:
        write_state(f.create_group("state"), net.state_dict())
    with h5py.File(tmp_path / "s.h5", "r") as f:
        back = read_state(f["state"])
    ref = net.state_dict()
    assert set(back) == set(ref)
    for k in ref:
        assert back[k].dtype == ref[k].dtype and back[k].shape == ref[k].shape
        assert torch.equal(back[k], ref[k]), k


def test_loaded_model_matches_logits(individual_run):
    out, _ = individual_run
    a, b = cmat.load(out), cmat.load(out)
    spec = a.networks[0].spec
    x = torch.rand(4, spec["in_channels"], spec["input_size"], spec["input_size"])
    for j in range(2):
        assert torch.equal(a.model(j)(x), b.model(j)(x))


def _copy(run_dir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def test_corrupted_chunk_detected(individual_run, tmp_path):
    run = _copy(individual_run[0], tmp_path)
    path = run / "store.h5"
    with h5py.File(path, "r") as f:
        name = next(n for n, d in f["networks/0/state"].items() if d.size > 100)
        off = f["networks/0/state"][name].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    for i in range(off + 10, off + 40):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CmatError) as err:
        cmat.load(run)
    assert "corrupt" in str(err.value) and "\n" not in str(err.value)


def test_truncated_store_refused(individual_run, tmp_path):
    run = _copy(individual_run[0], tmp_path)
    path = run / "store.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CmatError) as err:
        cmat.load(run)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_foreign_and_version_mismatch_refused(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(CmatError, match="not a cmat store"):
        cmat.load(foreign)
    future = tmp_path / "future.h5"
    with h5py.File(future, "w") as f:
        f.attrs["format"] = "cmat-store"
        f.attrs["version"] = 99
    with pytest.raises(CmatError, match="version 99"):
        cmat.load(future)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(CmatError, match="not a readable HDF5"):
        cmat.load(text)
    with pytest.raises(CmatError, match="no store"):
        cmat.load(tmp_path / "missing")


def test_store_uses_checksums_and_compression(individual_run):
    with h5py.File(individual_run[0] / "store.h5", "r") as f:
        for ds in f["networks/0/state"].values():
            if ds.size > 1:
                assert ds.fletcher32 and ds.compression == "gzip"
    assert not any(p.name.endswith(".tmp") for p in individual_run[0].iterdir())
