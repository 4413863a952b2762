"""The engine: the task loop (:mod:`cmat.engine.run`), the per-task trainer
(:mod:`cmat.engine.trainer`) and what a run reports (:mod:`cmat.engine.results`)."""
from cmat.engine.results import evaluate_on_test, results_json  # noqa: F401
from cmat.engine.run import Run  # noqa: F401
from cmat.engine.trainer import Trainer, batches, lr_lambda, optimizer_step, resolve_device  # noqa: F401
