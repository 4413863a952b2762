"""Plain adversarial-training baselines (any objective).

- ``at-finetune``: one backbone with per-task heads trained sequentially; everything shared
  is fine-tuned on each new task, so earlier tasks are forgotten (the lower bound).
- ``at-individual``: one separate network per task (the upper bound at T× the parameters;
  it also supplies CMAT's accuracy goals).
"""
from __future__ import annotations

from cmat.methods import Method, OneNetwork, register


@register
class ATFinetune(OneNetwork):
    """One shared backbone fine-tuned task after task, per-task heads (forgets: the lower bound)."""
    name = "at-finetune"
    supports_ddp = True

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.net = self.new_network(range(len(seq)))

    def train_task(self, t, task, trainer):
        params = list(self.net.features.parameters()) + list(self.net.heads[t].parameters())
        trainer.fit(self.net.task_view(t), params, task, t, snapshot=self.net)


@register
class ATIndividual(Method):
    """A separate network per task (the upper bound at T× the parameters; CMAT's goals)."""
    name = "at-individual"
    supports_ddp = True

    def evaluations_of(self, j, n_tasks):
        return 1  # one network per task, never touched again

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.nets = []

    def before_task(self, t, task):
        self.nets.append(self.new_network([t]))

    def train_task(self, t, task, trainer):
        net = self.nets[t]
        trainer.fit(net.task_view(0), list(net.parameters()), task, t, snapshot=net)

    def restore(self, networks, decisions):
        self.nets = list(networks)

    def networks(self):
        return self.nets

    def task_slots(self):
        return [(j, 0) for j in range(len(self.nets))]
