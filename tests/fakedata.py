"""Format-exact fake copies of the on-disk datasets, small enough for unit tests.

Each writer puts files exactly where torchvision would (under ``root``) and returns what the
tests need to check the loaders. Every image encodes its identity so tests can follow it
through splits and reshapes:
- CIFAR: in the red plane, pixel 0 = the label (fine label for CIFAR-100), pixels 1-2 = a
  unique sample id (big-endian; test ids start at 30000); green pixel 0 = the coarse label.
- MNIST/EMNIST: stored pixel (0, 0) = the label, (0, 1)-(0, 2) = a unique id as above; EMNIST
  images also carry a bright *row* 5 as stored (a column after the loader's transpose).
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

# The 20 real CIFAR-100 superclass names (alphabetical in the real meta file).
CIFAR100_COARSE = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2"]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TEST_ID_OFFSET = 30000


def _encode(images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
    """Write label and id into the first three values of each flattened image (in place)."""
    flat = images.reshape(len(images), -1)
    flat[:, 0] = labels
    flat[:, 1] = ids // 256
    flat[:, 2] = ids % 256


def decode_ids(images) -> np.ndarray:
    """The sample ids of loaded images (uint8 tensor/array N×C×H×W, as the loaders keep them)."""
    flat = np.asarray(images).reshape(len(images), -1).astype(np.int64)
    return flat[:, 1] * 256 + flat[:, 2]


def _dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_images(rng, labels, id_offset):
    data = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    _encode(data, labels, id_offset + np.arange(len(labels)))
    return data


def write_cifar100(root, per_class_train: int = 10, per_class_test: int = 2, seed: int = 0) -> dict:
    """Fake ``cifar-100-python/{train,test,meta}``: all 100 fine and 20 coarse classes, a random
    fine->coarse grouping (5 fines each) and the coarse names in a non-alphabetical order.

    Returns ``{"fine_to_coarse": array(100), "coarse_names": [...], "fine_names": [...]}``.
    """
    rng = np.random.default_rng(seed)
    fine_to_coarse = np.empty(100, dtype=np.int64)
    fine_to_coarse[rng.permutation(100)] = np.repeat(np.arange(20), 5)
    coarse_names = list(CIFAR100_COARSE)
    while coarse_names == sorted(coarse_names):
        coarse_names = [coarse_names[i] for i in rng.permutation(20)]
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    base = Path(root) / "cifar-100-python"
    for split, per, offset in (("train", per_class_train, 0), ("test", per_class_test, TEST_ID_OFFSET)):
        fine = rng.permutation(np.repeat(np.arange(100), per))
        data = _cifar_images(rng, fine, offset)
        data[:, 1024] = fine_to_coarse[fine]  # green pixel 0 = coarse label
        _dump({"filenames": [f"img_{i}.png" for i in range(len(fine))], "batch_label": f"{split} batch",
               "fine_labels": fine.tolist(), "coarse_labels": fine_to_coarse[fine].tolist(), "data": data},
              base / split)
    _dump({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, base / "meta")
    return {"fine_to_coarse": fine_to_coarse, "coarse_names": coarse_names, "fine_names": fine_names}


def write_cifar10(root, per_class_train: int = 50, per_class_test: int = 10, seed: int = 0) -> dict:
    """Fake ``cifar-10-batches-py``: 5 training batches, a test batch and ``batches.meta``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "cifar-10-batches-py"
    labels = rng.permutation(np.repeat(np.arange(10), per_class_train))
    data = _cifar_images(rng, labels, 0)
    for b, idx in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _dump({"batch_label": f"training batch {b} of 5", "labels": labels[idx].tolist(), "data": data[idx],
               "filenames": [f"img_{i}.png" for i in idx]}, base / f"data_batch_{b}")
    test_labels = rng.permutation(np.repeat(np.arange(10), per_class_test))
    _dump({"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(),
           "data": _cifar_images(rng, test_labels, TEST_ID_OFFSET),
           "filenames": [f"t_{i}.png" for i in range(len(test_labels))]}, base / "test_batch")
    _dump({"num_cases_per_batch": len(labels) // 5, "label_names": CIFAR10_NAMES, "num_vis": 3072},
          base / "batches.meta")
    return {"names": CIFAR10_NAMES}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in IDX format: magic ``0 0 8 ndim``, big-endian uint32 sizes, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _digit_images(rng, labels, id_offset, bar_row=None):
    images = rng.integers(0, 100, size=(len(labels), 28, 28), dtype=np.uint8)
    if bar_row is not None:
        images[:, bar_row, 3:] = 255
    _encode(images, labels, id_offset + np.arange(len(labels)))
    return images


def write_mnist(root, per_class_train: int = 20, per_class_test: int = 5, gz: bool = False, seed: int = 0) -> dict:
    """Fake ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` if ``gz``)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    for prefix, per, offset in (("train", per_class_train, 0), ("t10k", per_class_test, TEST_ID_OFFSET)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", _digit_images(rng, labels, offset), gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return {"raw": raw}


EMNIST_BAR_ROW = 5


def write_emnist(root, per_class_train: int = 4, per_class_test: int = 1, gz: bool = False, seed: int = 0) -> dict:
    """Fake ``EMNIST/raw/emnist-balanced-{train,test}-...-ubyte``: 47 classes; each stored image
    has a bright row :data:`EMNIST_BAR_ROW` (columns 3..27), which must load as a column."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "EMNIST" / "raw"
    for split, per, offset in (("train", per_class_train, 0), ("test", per_class_test, TEST_ID_OFFSET)):
        labels = rng.permutation(np.repeat(np.arange(47, dtype=np.uint8), per))
        images = _digit_images(rng, labels, offset, bar_row=EMNIST_BAR_ROW)
        _write_idx(raw / f"emnist-balanced-{split}-images-idx3-ubyte", images, gz)
        _write_idx(raw / f"emnist-balanced-{split}-labels-idx1-ubyte", labels, gz)
    return {"raw": raw}
