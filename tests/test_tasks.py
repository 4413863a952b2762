"""Task sequences and loaders: registry, real-format parsing (on fake files), splits, errors."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from cmat import tasks
from cmat.errors import CmatError
try:
    from tests import fakedata
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import fakedata

ALL_NAMES = ["cifar100-20split", "cifar100-10split", "cifar10-5split", "mnist-5split", "fashion-5split", "pmnist-10",
             "rmnist-10", "emnist-balanced", "cifar10-cifar100", "mnist-emnist", "digits-5split", "digits-2split",
             "toy-2task"]
OFFLINE = ("digits-5split", "digits-2split", "toy-2task")
FILE_BACKED = [n for n in ALL_NAMES if n not in OFFLINE]


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100")
    return root, fakedata.write_cifar100(root)


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    fakedata.write_cifar10(root)
    return root


def _ids(data):
    return set(fakedata.decode_ids(data.images).tolist())


def check_task_contract(task, shape, augment):
    """Labels 0..C-1 (all present), float [0,1] items of the right shape, disjoint splits."""
    c = task.num_classes
    for split in (task.train, task.val, task.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert tuple(split.images.shape[1:]) == shape
        assert sorted(split.labels.unique().tolist()) == list(range(c))
    assert task.train.augment == augment and task.val.augment is None and task.test.augment is None
    x, y = task.val[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape and 0.0 <= x.min() and x.max() <= 1.0
    assert isinstance(y, int) and 0 <= y < c
    xs, _ = task.test.tensors()
    assert xs.dtype == torch.float32 and 0.0 <= xs.min() and xs.max() <= 1.0
    assert len(task.mean) == len(task.std) == shape[0]


# --- registry -------------------------------------------------------------------------------

def test_list_sequences_has_all_names_and_is_json():
    listed = tasks.list_sequences()
    assert [d["name"] for d in listed] == ALL_NAMES
    assert json.loads(json.dumps(listed)) == listed
    for d in listed:
        info = tasks.SEQUENCES[d["name"]]
        assert d["num_tasks"] == info.num_tasks == len(d["classes_per_task"])
        assert len(d["input_shape"]) == 3
        assert d["offline"] == (d["name"] in OFFLINE) == (not d["files"])


def test_unknown_sequence_is_one_line_error_listing_names():
    with pytest.raises(CmatError) as err:
        tasks.get_tasks("cifar1000")
    msg = str(err.value)
    assert "\n" not in msg and "cifar1000" in msg
    assert all(name in msg for name in ALL_NAMES)


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        tasks.SEQUENCES["x"] = None


# --- CIFAR-100 ------------------------------------------------------------------------------

def test_cifar100_20split_superclasses_alphabetical_grouped_by_data(cifar100_root):
    root, info = cifar100_root
    seq = tasks.get_tasks("cifar100-20split", data_root=root)
    assert len(seq) == 20 and seq.name == "cifar100-20split"
    assert info["coarse_names"] != sorted(info["coarse_names"])  # the fake meta is shuffled
    assert seq.task_names == sorted(info["coarse_names"])
    for task in seq:
        coarse = info["coarse_names"].index(task.name)
        fines = sorted(np.flatnonzero(info["fine_to_coarse"] == coarse).tolist())
        assert task.classes == [info["fine_names"][f] for f in fines]
        for split in (task.train, task.val, task.test):
            fine_of_image = split.images[:, 0, 0, 0].numpy()   # red pixel 0 = fine label
            coarse_of_image = split.images[:, 1, 0, 0].numpy()  # green pixel 0 = coarse label
            assert (coarse_of_image == coarse).all()
            assert (fine_of_image == np.array(fines)[split.labels.numpy()]).all()  # 0..4 by fine id
        check_task_contract(task, (3, 32, 32), "crop-flip")


def test_cifar100_20split_splits_disjoint_and_sized(cifar100_root):
    root, _ = cifar100_root
    seq = tasks.get_tasks("cifar100-20split", data_root=root)
    for task in seq:  # 5 fine classes × 10 training images, × 2 test images
        assert (len(task.train), len(task.val), len(task.test)) == (45, 5, 10)
        assert torch.bincount(task.val.labels).tolist() == [1] * 5
        tr, va, te = _ids(task.train), _ids(task.val), _ids(task.test)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert min(te) >= fakedata.TEST_ID_OFFSET > max(tr | va)


def test_cifar100_10split_consecutive_fine_ids(cifar100_root):
    root, info = cifar100_root
    seq = tasks.get_tasks("cifar100-10split", data_root=root)
    assert len(seq) == 10
    for j, task in enumerate(seq):
        assert task.classes == info["fine_names"][10 * j:10 * j + 10]
        fine = task.test.images[:, 0, 0, 0].numpy()
        assert (fine == 10 * j + task.test.labels.numpy()).all()


def test_mean_std_are_train_split_statistics(cifar100_root):
    root, _ = cifar100_root
    task = tasks.get_tasks("cifar100-10split", data_root=root)[3]
    x, _ = task.train.tensors()
    x = x.double()
    assert np.allclose(task.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-9)
    assert np.allclose(task.std, x.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-9)


# --- CIFAR-10 -------------------------------------------------------------------------------

def test_cifar10_5split_pairs_sizes_and_stratified_val(cifar10_root):
    seq = tasks.get_tasks("cifar10-5split", data_root=cifar10_root)
    assert seq.task_names == ["airplane-automobile", "bird-cat", "deer-dog", "frog-horse", "ship-truck"]
    for j, task in enumerate(seq):
        assert task.classes == fakedata.CIFAR10_NAMES[2 * j:2 * j + 2]
        assert (len(task.train), len(task.val), len(task.test)) == (90, 10, 20)
        assert torch.bincount(task.val.labels).tolist() == [5, 5]  # 10% of each class
        assert (task.train.images[:, 0, 0, 0] == 2 * j + task.train.labels).all()
        tr, va, te = _ids(task.train), _ids(task.val), _ids(task.test)
        assert len(tr | va) == 100 and not (tr & va) and not ((tr | va) & te)
        check_task_contract(task, (3, 32, 32), "crop-flip")


def test_val_split_follows_seed(cifar10_root):
    def val_ids(seed):
        return [sorted(_ids(t.val)) for t in tasks.get_tasks("cifar10-5split", data_root=cifar10_root, seed=seed)]

    assert val_ids(0) == val_ids(0)
    assert val_ids(0) != val_ids(1)
    first = val_ids(0)
    assert first[0] != first[1]  # tasks draw independent splits


def test_val_fraction_argument(cifar10_root):
    task = tasks.get_tasks("cifar10-5split", data_root=cifar10_root, val_fraction=0.2)[0]
    assert (len(task.train), len(task.val)) == (80, 20)
    with pytest.raises(CmatError):
        tasks.get_tasks("cifar10-5split", data_root=cifar10_root, val_fraction=1.5)


def test_data_root_from_environment(cifar10_root, monkeypatch):
    monkeypatch.setenv("CMAT_DATA", str(cifar10_root))
    assert len(tasks.get_tasks("cifar10-5split")) == 5


def test_present_files_are_never_downloaded(cifar10_root, monkeypatch):
    import torchvision.datasets

    def refuse(*args, **kwargs):
        raise AssertionError("download attempted although the files exist")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse)
    assert len(tasks.get_tasks("cifar10-5split", data_root=cifar10_root, download=True)) == 5


def test_download_flag_fetches_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets
    calls = []

    def fake_cifar10(root, train=True, download=False, **kwargs):
        calls.append((root, download))
        fakedata.write_cifar10(root)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    seq = tasks.get_tasks("cifar10-5split", data_root=tmp_path / "new", download=True)
    assert len(seq) == 5 and calls == [(str(tmp_path / "new"), True)]


def test_failed_download_is_one_line_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz:\nTried https://...")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(CmatError) as err:
        tasks.get_tasks("cifar10-5split", data_root=tmp_path, download=True)
    assert "\n" not in str(err.value) and "CIFAR-10" in str(err.value)


# --- MNIST / EMNIST -------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_5split_reads_idx_plain_and_gz(tmp_path, gz):
    fakedata.write_mnist(tmp_path, gz=gz)
    seq = tasks.get_tasks("mnist-5split", data_root=tmp_path)
    assert seq.task_names == [f"mnist-{2 * j}-{2 * j + 1}" for j in range(5)]
    for j, task in enumerate(seq):
        assert task.classes == [str(2 * j), str(2 * j + 1)]
        assert (len(task.train), len(task.val), len(task.test)) == (36, 4, 10)
        assert (task.train.images[:, 0, 0, 0] == 2 * j + task.train.labels).all()
        check_task_contract(task, (1, 28, 28), None)


def test_emnist_balanced_is_transposed_to_mnist_orientation(tmp_path):
    fakedata.write_emnist(tmp_path)
    seq = tasks.get_tasks("emnist-balanced", data_root=tmp_path)
    assert len(seq) == 1
    task = seq[0]
    assert task.num_classes == 47 and task.classes[:11] == [str(d) for d in range(10)] + ["A"]
    assert task.classes[-11:] == list("abdefghnqrt")
    check_task_contract(task, (1, 28, 28), None)
    img = task.test.images[:, 0]
    row = fakedata.EMNIST_BAR_ROW
    assert (img[:, 3:, row] == 255).all()       # the stored bright row is now a column
    assert not (img[:, row, 3:] == 255).all()
    assert (img[:, 0, 0] == task.test.labels).all()
    stored = img.transpose(1, 2).unsqueeze(1)  # back to the file's orientation for the ids
    assert min(fakedata.decode_ids(stored)) >= fakedata.TEST_ID_OFFSET
    assert (len(task.train) + len(task.val), len(task.test)) == (47 * 4, 47)


def test_fashion_5split_reads_fashion_mnist_class_pairs(tmp_path):
    write_fake_fashion(tmp_path)
    seq = tasks.get_tasks("fashion-5split", data_root=tmp_path)
    assert seq.task_names == [f"fashion-{2 * j}-{2 * j + 1}" for j in range(5)]
    assert [t.classes for t in seq][:2] == [["T-shirt/top", "Trouser"], ["Pullover", "Dress"]]
    for j, task in enumerate(seq):
        assert (task.train.images[:, 0, 0, 0] == 2 * j + task.train.labels).all()
        check_task_contract(task, (1, 28, 28), None)
    with pytest.raises(CmatError, match="FashionMNIST/raw/train-images-idx3-ubyte"):
        tasks.get_tasks("fashion-5split", data_root=tmp_path / "empty")


@pytest.mark.parametrize("name", ["pmnist-10", "rmnist-10"])
def test_transformed_mnist_splits_follow_the_protocol(tmp_path, name):
    """Every image of the fake MNIST, padded and transformed per task: the same validation images
    in every task (round(val_fraction·N), seeded), the others train, every test image in every task."""
    from cmat.tasks import transformed as T

    fakedata.write_mnist(tmp_path)
    seq = tasks.get_tasks(name, data_root=tmp_path, val_fraction=0.25, seed=3)
    assert len(seq) == 10 and seq.task_names == [f"{name[:6]}-{j}" for j in range(10)]
    val_labels = None
    for j, task in enumerate(seq):
        check_task_contract(task, (1, 32, 32), None)
        assert (len(task.train), len(task.val), len(task.test)) == (150, 50, 50)
        source = T.permutation(j) if name == "pmnist-10" else T.rotation_source(T.ROTATIONS[j])
        if name == "pmnist-10":  # undo the permutation: the padded fake images, ids intact
            inverse = np.argsort(source)
            back = {s: T.permute(getattr(task, s).images.numpy(), inverse) for s in ("train", "val", "test")}
            ids = {s: set(fakedata.decode_ids(b[:, :, 2:30, 2:30]).tolist()) for s, b in back.items()}
            assert not ids["train"] & ids["val"] and len(ids["train"] | ids["val"]) == 200
            assert min(ids["test"]) >= fakedata.TEST_ID_OFFSET and len(ids["test"]) == 50
            assert (back["train"][:, :, :2] == 0).all() and (back["train"][:, :, :, 30:] == 0).all()  # the padding
        val_labels = task.val.labels if val_labels is None else val_labels
        assert torch.equal(task.val.labels, val_labels)
    assert not torch.equal(seq[0].val.images, seq[1].val.images)  # different transforms
    other = tasks.get_tasks(name, data_root=tmp_path, val_fraction=0.25, seed=4)
    assert not torch.equal(other[0].val.labels, seq[0].val.labels) or not torch.equal(other[0].val.images,
                                                                                       seq[0].val.images)


# --- transfer pairs -------------------------------------------------------------------------

def test_mnist_emnist_pair_source_then_target(tmp_path):
    fakedata.write_mnist(tmp_path)
    fakedata.write_emnist(tmp_path)
    seq = tasks.get_tasks("mnist-emnist", data_root=tmp_path)
    assert seq.task_names == ["mnist", "emnist-balanced"] and [t.index for t in seq] == [0, 1]
    assert seq[0].num_classes == 10 and seq[1].num_classes == 47
    assert (len(seq[0].train) + len(seq[0].val), len(seq[0].test)) == (200, 50)
    assert (len(seq[1].train) + len(seq[1].val), len(seq[1].test)) == (47 * 4, 47)
    img = seq[1].test.images[:, 0]
    assert (img[:, 3:, fakedata.EMNIST_BAR_ROW] == 255).all()  # EMNIST in MNIST orientation
    for task in seq:
        check_task_contract(task, (1, 28, 28), None)
    assert len(tasks.get_tasks("mnist-emnist", data_root=tmp_path, max_tasks=1)) == 1


def test_cifar10_cifar100_pair_source_then_target(cifar10_root, cifar100_root, tmp_path):
    for src in (cifar10_root, cifar100_root[0]):
        for item in src.iterdir():
            (tmp_path / item.name).symlink_to(item)
    seq = tasks.get_tasks("cifar10-cifar100", data_root=tmp_path)
    assert seq.task_names == ["cifar10", "cifar100"]
    assert seq[0].classes == fakedata.CIFAR10_NAMES and seq[1].num_classes == 100
    assert len(seq[1].test) == 200 and len(seq[0].test) == 100
    assert min(_ids(seq[1].test)) >= fakedata.TEST_ID_OFFSET > max(_ids(seq[1].train) | _ids(seq[1].val))
    for task in seq:
        check_task_contract(task, (3, 32, 32), tasks.SEQUENCES["cifar10-cifar100"].augment)


def test_max_tasks_out_of_range_is_one_line():
    with pytest.raises(CmatError, match="max_tasks must be in 1..2"):
        tasks.get_tasks("toy-2task", max_tasks=3)


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FILE_BACKED)
def test_missing_dataset_is_one_line_error_naming_path_and_flag(tmp_path, name):
    with pytest.raises(CmatError) as err:
        tasks.get_tasks(name, data_root=tmp_path)
    msg = str(err.value)
    expected = tmp_path / tasks.SEQUENCES[name].files[0]
    assert "\n" not in msg and str(expected) in msg
    assert "--download" in msg and "--data-root" in msg


def test_partly_missing_dataset_names_the_missing_file(tmp_path):
    fakedata.write_mnist(tmp_path)
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(CmatError, match="t10k-labels-idx1-ubyte"):
        tasks.get_tasks("mnist-5split", data_root=tmp_path)


def test_malformed_files_are_one_line_errors_naming_the_file(tmp_path):
    fakedata.write_mnist(tmp_path)
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    with pytest.raises(CmatError) as err:
        tasks.get_tasks("mnist-5split", data_root=tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)

    fakedata.write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py/batches.meta"
    meta.write_bytes(b"not a pickle\n")
    with pytest.raises(CmatError) as err:
        tasks.get_tasks("cifar10-5split", data_root=tmp_path)
    assert str(meta) in str(err.value) and "\n" not in str(err.value)

    batch = tmp_path / "cifar-10-batches-py/data_batch_3"
    fakedata.write_cifar10(tmp_path)
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, f)
    with pytest.raises(CmatError, match="data_batch_3"):
        tasks.get_tasks("cifar10-5split", data_root=tmp_path)


def write_fake_fashion(root):
    """Fake Fashion-MNIST: the fake MNIST files (same format) under ``FashionMNIST/raw``."""
    fakedata.write_mnist(root / "fake-fashion", seed=1)
    (root / "FashionMNIST").mkdir(exist_ok=True)
    (root / "fake-fashion/MNIST/raw").rename(root / "FashionMNIST/raw")


def test_registry_matches_built_sequences(tmp_path, cifar100_root, cifar10_root):
    fakedata.write_mnist(tmp_path)
    write_fake_fashion(tmp_path)
    fakedata.write_emnist(tmp_path)
    both = tmp_path / "both"
    both.mkdir()
    for src in (cifar10_root, cifar100_root[0]):
        for item in src.iterdir():
            (both / item.name).symlink_to(item)
    roots = {"cifar100-20split": cifar100_root[0], "cifar100-10split": cifar100_root[0],
             "cifar10-5split": cifar10_root, "cifar10-cifar100": both}
    for name, info in tasks.SEQUENCES.items():
        seq = tasks.get_tasks(name, data_root=roots.get(name, tmp_path))
        assert len(seq) == info.num_tasks
        assert [t.num_classes for t in seq] == list(info.classes_per_task)
        assert all(t.input_shape == info.input_shape and t.train.augment == info.augment for t in seq)
        assert len(set(seq.task_names)) == len(seq)


# --- offline sequences ----------------------------------------------------------------------

def test_digits_offline_all_1797_images(tmp_path):
    seq = tasks.get_tasks("digits-5split", data_root=tmp_path / "nothing-here")
    assert len(seq) == 5
    assert sum(len(t.train) + len(t.val) + len(t.test) for t in seq) == 1797
    for j, task in enumerate(seq):
        assert task.classes == [str(2 * j), str(2 * j + 1)]
        check_task_contract(task, (1, 8, 8), None)
        n_test = len(task.test)
        assert 0.18 < n_test / (n_test + len(task.train) + len(task.val)) < 0.22
    assert max(int(t.train.images.max()) for t in seq) == 255
    other = tasks.get_tasks("digits-5split", seed=1)
    assert all(torch.equal(a.test.images, b.test.images) for a, b in zip(seq, other))  # fixed test set
    assert not all(torch.equal(a.val.images, b.val.images) for a, b in zip(seq, other))


def test_toy_is_deterministic_and_offline(tmp_path):
    a = tasks.get_tasks("toy-2task")
    b = tasks.get_tasks("toy-2task", data_root=tmp_path / "nothing-here")
    assert len(a) == 2 and a.task_names != [] and a.task_names == b.task_names
    for ta, tb in zip(a, b):
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(ta, split).images, getattr(tb, split).images)
            assert torch.equal(getattr(ta, split).labels, getattr(tb, split).labels)
        assert ta.mean == tb.mean and ta.std == tb.std
        check_task_contract(ta, tasks.SEQUENCES["toy-2task"].input_shape, tasks.SEQUENCES["toy-2task"].augment)
    assert not torch.equal(a[0].test.images, a[1].test.images)
    c = tasks.get_tasks("toy-2task", seed=1)
    assert torch.equal(a[0].test.images, c[0].test.images)  # the data is fixed ...
    assert not torch.equal(a[0].val.images, c[0].val.images)  # ... the seed picks the val split


def test_digits_2split_is_the_digits_split_in_two_halves():
    five, two = tasks.get_tasks("digits-5split"), tasks.get_tasks("digits-2split")
    assert two.task_names == ["digits-0-4", "digits-5-9"]
    assert [t.classes for t in two] == [["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]]
    # the same fixed test split: the halves hold exactly the 5-split's test images
    fours = int((five[2].test.labels == 0).sum())  # digit 4 is label 0 of task digits-4-5
    assert len(two[0].test) == len(five[0].test) + len(five[1].test) + fours
    assert len(two[0].test) + len(two[1].test) == sum(len(t.test) for t in five)
    for t in two:
        check_task_contract(t, (1, 8, 8), None)


def test_train_samples_subsets_training_only_seeded():
    from cmat.config import resolve

    cfg = resolve("digits-5split", overrides={"train": {"samples": 50}, "max_tasks": 3})
    full = tasks.get_tasks("digits-5split", seed=0, val_fraction=cfg.train.val_fraction)
    seq = tasks.tasks_for_config(cfg)
    assert len(seq) == 3
    for a, b in zip(seq, full):
        assert len(a.train) == 50
        assert len(a.val) == len(b.val) and len(a.test) == len(b.test)
        ids = {bytes(img.numpy().tobytes()) for img in b.train.images}
        assert all(bytes(img.numpy().tobytes()) in ids for img in a.train.images)  # a subset
    again = tasks.tasks_for_config(cfg)
    assert all(torch.equal(a.train.images, b.train.images) for a, b in zip(seq, again))
    with pytest.raises(CmatError, match="train.samples"):
        from cmat.config import validate

        cfg.train.samples = 0
        validate(cfg)
