"""The HDF5 store: bit-exact round trips; corrupt, truncated, foreign, other-version files refused;
version 3's few-datasets layout; version-2 stores still load."""
import json
import shutil
import sys
from pathlib import Path

import h5py
import pytest
import torch

import cmat
from cmat.errors import CmatError
from cmat.nn import MultiHeadNet
from cmat.store import VERSION, read_state, save_run, write_state
from cmat.store.arrays import COMPACT_BYTES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import golden_digest  # noqa: E402
import store_rehearsal  # noqa: E402


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


@pytest.mark.parametrize("layout", ["chunked", "compact"])
def test_corrupted_data_detected(individual_run, tmp_path, layout):
    run = _copy(individual_run[0], tmp_path)
    path = run / "store.h5"
    with h5py.File(path, "r") as f:
        state = f["networks/0/state"]
        if layout == "chunked":
            off = state["float32"].id.get_chunk_info(0).byte_offset
        else:  # a compact dataset's bytes sit in its object header: find them in the file
            assert state["int64"].chunks is None and state["int64"].nbytes <= COMPACT_BYTES
            raw = state["int64"][()].tobytes()
            off = path.read_bytes().index(raw) - 10
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


def test_store_has_a_few_datasets_per_network_and_little_metadata(individual_run):
    """Version 3: one dataset per kind (the weights of each dtype, owners, piggyback masks), the
    large ones compressed with a checksum of their own, the small ones compact; the bytes
    outside the datasets' data (headers, index, configuration) a small share of the file."""
    path = individual_run[0] / "store.h5"
    with h5py.File(path, "r") as f:
        assert f.attrs["version"] == VERSION == 3
        stored = []
        f.visititems(lambda n, o: stored.append(o) if isinstance(o, h5py.Dataset) else None)
        for ds in stored:
            # state/<dtype>
            assert ds.name.count("/") == 4 and ds.name.split("/")[3:] in (["state", "float32"], ["state", "int64"])
            if ds.chunks:
                assert ds.fletcher32 and ds.compression == "gzip" and ds.nbytes > 4096
            else:
                assert ds.id.get_create_plist().get_layout() == h5py.h5d.COMPACT
        data = sum(ds.id.get_storage_size() for ds in stored)
    size = path.stat().st_size
    assert len(stored) <= 2 * len(cmat.load(path).networks)
    assert size - data < 20_000, f"{size - data} bytes of metadata"
    assert not any(p.name.endswith(".tmp") for p in individual_run[0].iterdir())


class _Method:
    decisions = {"fixture": True}

    def __init__(self, run):
        self.run = run

    def networks(self):
        return self.run.networks

    def task_slots(self):
        return self.run.slots


def test_a_version_2_store_still_loads_and_round_trips(tmp_path):
    """tests/fixtures/store_v2.h5 was written by the last version-2 writer (make_store_v2.py):
    the current reader gives back every tensor it held (digests recorded by that writer), the
    same logits, and re-saved as version 3 the same tensors again, in far fewer bytes."""
    old = ROOT / "tests" / "fixtures" / "store_v2.h5"
    expected = json.loads((ROOT / "tests" / "fixtures" / "store_v2.json").read_text())["tensors"]
    with h5py.File(old, "r") as f:
        assert f.attrs["version"] == 2 and isinstance(f["networks/0/owner"], h5py.Group)
    assert golden_digest.store_tensors(old) == expected
    run = cmat.load(old)
    assert any(n.startswith("networks/1/") and ".gate" in n for n in expected)  # HAT's bool gates
    assert any("/piggyback/" in n for n in expected)
    new = save_run(tmp_path / "store.h5", _Method(run), cmat.get_tasks("digits-5split"), run.config)
    with h5py.File(new, "r") as f:
        assert f.attrs["version"] == 3 and isinstance(f["networks/0/owner"], h5py.Dataset)
    assert golden_digest.store_tensors(new) == expected
    again = cmat.load(new)
    x = torch.rand(3, 1, 8, 8)
    for j in range(len(run.task_names)):
        assert torch.equal(run.model(j)(x), again.model(j)(x))
    assert new.stat().st_size < old.stat().st_size / 3


def test_small_vgg16_rehearsal_round_trips_and_costs_little_beyond_its_data(tmp_path):
    """scripts/store_rehearsal.py on 3 tasks of a width-0.125 VGG16: every tensor back bit for bit
    (the script exits otherwise), at most 1.1× the float32 weights (BN and heads included), and
    the piggyback masks within 10% of the entropy of their bits."""
    net = store_rehearsal.rehearsal_net(3, 0.125, 0.83, 0.8, seed=0)
    res = store_rehearsal.measure(net, 3)
    assert res["ratio"] <= 1.1, res
    selectable = sum(int(((m.owner > 0) & (m.owner < t)).sum()) for m in net.masked_layers() for t in m.bits)
    with h5py.File(store_rehearsal.write(net, 3, tmp_path / "s.h5"), "r") as f:
        stored = f["networks/0/piggyback"].id.get_storage_size()
    entropy_bytes = selectable * 0.7219 / 8  # h(0.8) bits per selectable position
    assert stored <= 1.1 * entropy_bytes + 512, (stored, entropy_bytes)
