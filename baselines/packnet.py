"""PackNet (Mallya & Lazebnik 2018) on the masked network, with any training objective.

Task t trains the free weights (which become t's) while using every weight of tasks < t as
they are (no piggyback mask); then, unless t is the last task, the smallest-magnitude
``prune_fraction`` (default 0.6) of t's weights in each layer are released (weight and owner
set to 0), the rest is retrained for ``retrain_epochs`` and frozen. Per-task BN, biases and
heads, so earlier tasks are never changed: zero forgetting is exact.
"""
from __future__ import annotations

from cmat.methods import MaskedMethod, Option, register


@register
class PackNet(MaskedMethod):
    """PackNet (Mallya & Lazebnik 2018): train free weights, prune, retrain, freeze (zero forgetting)."""
    name = "packnet"
    supports_ddp = True
    options = {
        "prune_fraction": Option(0.6, "fraction of a task's free weights pruned after training", 0.0, 0.999),
        "retrain_epochs": Option(None, "retraining epochs after pruning (None: max(1, train.epochs // 2))",
                                 1, 10 ** 6, integer=True),
    }

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.prune_fraction = self.opts["prune_fraction"]
        self.retrain_epochs = self.opts["retrain_epochs"] or max(1, cfg.train.epochs // 2)

    def planned_phases(self, t, task):
        phases = [{"name": "train", "epochs": self.cfg.train.epochs}]
        if t < len(self.seq) - 1 and self.prune_fraction > 0:
            phases.append({"name": "retrain", "epochs": self.retrain_epochs})
        return phases

    def evaluations_of(self, j, n_tasks):
        return 1  # frozen owned weights: task j's function never changes

    def before_task(self, t, task):
        self.net.add_task(t, task.num_classes, task.mean, task.std, 1.0)

    def _fit(self, t, task, trainer, epochs, tag):
        wd = self.cfg.train.weight_decay
        trainer.fit(self.net.task_view(t), None, task, t, snapshot=self.net, epochs=epochs,
                    param_groups=self.net.param_groups(t, wd),
                    after_backward=lambda: self.net.owned_weight_decay(t, wd), tag=tag, warm=tag != "train")

    def train_task(self, t, task, trainer):
        self._fit(t, task, trainer, None, "train")
        if t < len(self.seq) - 1 and self.prune_fraction > 0:
            counts = self.net.prune_owned(t, self.prune_fraction)
            pruned = sum(k for k, _ in counts.values())
            total = sum(n for _, n in counts.values())
            self.decisions.setdefault("tasks", []).append({"task": t, "sparsity": pruned / max(total, 1)})
            trainer.logger.scalar(f"task_{t + 1}/sparsity", pruned / max(total, 1), t + 1)
            self._fit(t, task, trainer, self.retrain_epochs, "retrain")

