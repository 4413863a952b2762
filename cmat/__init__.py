"""cmat: adversarially robust continual learning (CPG compact–pick–grow + adversarial training).

Python API (see README): ``cmat.load(run_dir)`` → a trained run with ``.task_names`` and
``.model(j)``; ``cmat.get_tasks(name, data_root=None, download=False)`` → a task sequence.
"""
__version__ = "0.1.0"


def load(run_dir):
    from cmat.store import load as _load

    return _load(run_dir)


def get_tasks(name, data_root=None, download=False, **kwargs):
    from cmat.tasks import get_tasks as _get_tasks

    return _get_tasks(name, data_root=data_root, download=download, **kwargs)
