"""The registry of task sequences and :func:`get_tasks`, the one way to build a sequence.

``SEQUENCES`` maps a sequence name to a :class:`SequenceInfo` (read-only). Each entry says what
the sequence is (dataset, tasks, classes per task, input shape, training augmentation), whether
it works offline, and which files it expects under the data root; ``list_sequences()`` gives
the same as JSON-serialisable dicts (``cmat tasks --json``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Optional

from cmat.errors import CmatError
from cmat.tasks import cifar, digits, mnist, toy, transformed
from cmat.tasks.base import ImageData, TaskSequence
from cmat.tasks.build import resolve_data_root, task_seed


@dataclass(frozen=True)
class SequenceInfo:
    """What a sequence is; ``loader(root, download, seed, val_fraction)`` builds its tasks.

    ``files`` are paths relative to the data root (IDX files may also be ``.gz``); an
    ``offline`` sequence needs no files and ignores the data root.
    """

    name: str
    description: str
    dataset: str
    num_tasks: int
    classes_per_task: tuple
    input_shape: tuple
    augment: Optional[str]
    offline: bool
    files: tuple
    loader: Callable = field(repr=False, compare=False)

    def as_dict(self) -> dict:
        """The entry as a JSON-serialisable dict (everything except the loader)."""
        return {"name": self.name, "description": self.description, "dataset": self.dataset,
                "num_tasks": self.num_tasks, "classes_per_task": list(self.classes_per_task),
                "input_shape": list(self.input_shape), "augment": self.augment,
                "offline": self.offline, "needs_download": not self.offline, "files": list(self.files)}


def _entries():
    yield SequenceInfo(
        "cifar100-20split", "CIFAR-100 split into its 20 superclasses (alphabetical), 5 fine classes each",
        "CIFAR-100", 20, (5,) * 20, (3, 32, 32), cifar.AUGMENT, False, cifar.CIFAR100_FILES,
        cifar.load_cifar100_20split)
    yield SequenceInfo(
        "cifar100-10split", "CIFAR-100 in 10 tasks of 10 consecutive fine classes",
        "CIFAR-100", 10, (10,) * 10, (3, 32, 32), cifar.AUGMENT, False, cifar.CIFAR100_FILES,
        cifar.load_cifar100_10split)
    yield SequenceInfo(
        "cifar10-5split", "CIFAR-10 in 5 tasks of 2 classes (0-1, 2-3, ...)",
        "CIFAR-10", 5, (2,) * 5, (3, 32, 32), cifar.AUGMENT, False, cifar.CIFAR10_FILES,
        cifar.load_cifar10_5split)
    yield SequenceInfo(
        "mnist-5split", "MNIST in 5 tasks of 2 digits (0-1, 2-3, ...)",
        "MNIST", 5, (2,) * 5, (1, 28, 28), mnist.AUGMENT, False, mnist.MNIST_FILES,
        mnist.load_mnist_5split)
    yield SequenceInfo(
        "fashion-5split", "Fashion-MNIST in 5 tasks of 2 classes (T-shirt/top-Trouser, Pullover-Dress, ...)",
        "Fashion-MNIST", 5, (2,) * 5, (1, 28, 28), mnist.AUGMENT, False, mnist.FASHION_FILES,
        mnist.load_fashion_5split)
    yield SequenceInfo(
        "pmnist-10", "permuted MNIST: 10 tasks of 10 digits, padded to 32x32, one fixed pixel permutation per "
        "task (SHIELD's: RandomState(1); the first task permuted too)", "MNIST", transformed.NUM_TASKS,
        (10,) * transformed.NUM_TASKS, (1, transformed.SIDE, transformed.SIDE), None, False, mnist.MNIST_FILES,
        transformed.load_pmnist_10)
    yield SequenceInfo(
        "rmnist-10", "rotated MNIST: 10 tasks of 10 digits, padded to 32x32, one fixed rotation per task "
        f"(SHIELD's: {', '.join(f'{a:.2f}' for a in transformed.ROTATIONS)} degrees)", "MNIST", transformed.NUM_TASKS,
        (10,) * transformed.NUM_TASKS, (1, transformed.SIDE, transformed.SIDE), None, False, mnist.MNIST_FILES,
        transformed.load_rmnist_10)
    yield SequenceInfo(
        "emnist-balanced", "EMNIST balanced, one task of 47 classes (transfer target), MNIST orientation",
        "EMNIST", 1, (47,), (1, 28, 28), mnist.AUGMENT, False, mnist.EMNIST_FILES,
        mnist.load_emnist_balanced)
    yield SequenceInfo(
        "cifar10-cifar100", "transfer pair: CIFAR-10 (10 classes), then CIFAR-100 (100 fine classes)",
        "CIFAR-10 + CIFAR-100", 2, (10, 100), (3, 32, 32), cifar.AUGMENT, False,
        cifar.CIFAR10_FILES + cifar.CIFAR100_FILES, cifar.load_cifar10_cifar100)
    yield SequenceInfo(
        "mnist-emnist", "transfer pair: MNIST (10 digits), then EMNIST balanced (47 classes, MNIST orientation)",
        "MNIST + EMNIST", 2, (10, 47), (1, 28, 28), mnist.AUGMENT, False, mnist.MNIST_FILES + mnist.EMNIST_FILES,
        mnist.load_mnist_emnist)
    yield SequenceInfo(
        "digits-5split", "scikit-learn's bundled 8x8 digits (1797 images, 20% held out as test), "
        "5 tasks of 2 digits", "sklearn-digits", 5, (2,) * 5, (1, 8, 8), digits.AUGMENT, True, (),
        digits.load_digits_5split)
    yield SequenceInfo(
        "digits-2split", "scikit-learn's bundled 8x8 digits as a transfer pair: digits 0-4, then 5-9",
        "sklearn-digits", 2, (5, 5), (1, 8, 8), digits.AUGMENT, True, (), digits.load_digits_2split)
    yield SequenceInfo(
        "toy-2task", "deterministic synthetic images (robust patch + non-robust dense template), "
        "2 tasks; trains in seconds", "synthetic", toy.NUM_TASKS, (toy.NUM_CLASSES,) * toy.NUM_TASKS,
        toy.INPUT_SHAPE, toy.AUGMENT, True, (), toy.load_toy_2task)


SEQUENCES = MappingProxyType({info.name: info for info in _entries()})


def sequence_info(name: str) -> SequenceInfo:
    """The registry entry of ``name``; an unknown name is a :class:`CmatError` listing the valid ones."""
    try:
        return SEQUENCES[name]
    except (KeyError, TypeError):
        raise CmatError(f"unknown task sequence {name!r}; valid names: {', '.join(SEQUENCES)}") from None


def list_sequences() -> list:
    """Every registered sequence as a JSON-serialisable dict, in registry order."""
    return [info.as_dict() for info in SEQUENCES.values()]


def get_tasks(name: str, data_root=None, download: bool = False, seed: int = 0,
              val_fraction: float = 0.1, max_tasks: Optional[int] = None) -> TaskSequence:
    """Build the task sequence ``name``.

    ``data_root``: the argument, else ``$CMAT_DATA``, else ``./data``; ``download=True`` fetches
    a missing dataset through torchvision (present files are never re-fetched or checksummed).
    ``seed`` chooses the validation split (``val_fraction`` of each class of each task's
    training set, stratified). ``max_tasks`` keeps the first N tasks (rehearsals, transfer
    sources); it must be in 1..the sequence's length. Missing or malformed data, an unknown name or a bad fraction
    raise a one-line :class:`CmatError`.
    """
    info = sequence_info(name)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise CmatError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_tasks is not None and not 1 <= int(max_tasks) <= info.num_tasks:
        raise CmatError(f"max_tasks must be in 1..{info.num_tasks} for {name}, got {max_tasks}")
    root = resolve_data_root(data_root)
    tasks = info.loader(root, bool(download), int(seed), float(val_fraction))
    if max_tasks is not None:
        tasks = tasks[:int(max_tasks)]
    return TaskSequence(name=name, tasks=tasks)


def tasks_for_config(cfg, data_root=None, download: Optional[bool] = None) -> TaskSequence:
    """The task sequence a run configuration names: ``cfg.tasks`` with its seed, validation
    fraction and ``max_tasks``; ``data_root``/``download`` override the configuration's. With
    ``train.samples`` = N each task trains on a seeded subset of N of its training images
    (validation and test splits unchanged)."""
    seq = get_tasks(cfg.tasks, data_root=data_root or cfg.data_root,
                    download=cfg.download if download is None else download, seed=cfg.seed,
                    val_fraction=cfg.train.val_fraction, max_tasks=cfg.max_tasks)
    n = getattr(cfg.train, "samples", None)
    if n is not None:
        seq.tasks = [subset_training(task, int(n), cfg.seed) for task in seq.tasks]
    return seq


def subset_training(task, n: int, seed: int):
    """``task`` with a seeded subset of ``n`` training images (sorted indices; all if fewer)."""
    import dataclasses

    import numpy as np
    import torch

    total = len(task.train)
    if n >= total:
        return task
    rng = np.random.default_rng(task_seed(seed, 1000 + task.index))
    idx = torch.from_numpy(np.sort(rng.choice(total, size=n, replace=False)))
    train = ImageData(task.train.images[idx], task.train.labels[idx], task.train.augment)
    return dataclasses.replace(task, train=train)
