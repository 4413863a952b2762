"""EWC (Kirkpatrick et al. 2017) under any cmat training objective: a cmat method in a package
of its own, found through the ``cmat.methods`` entry point (see pyproject.toml).

One backbone shared by all tasks, a head per task. After task t, the diagonal Fisher
information F_t of its parameters is estimated on its training images (squared gradients of
the log-likelihood of the model's own predictions, mean over batches); later tasks minimise
the objective's loss plus (λ/2)·Σ_t Σ_i F_t,i (θ_i − θ*_t,i)². ``method_options.ewc_lambda``
(default 100) sets λ.
"""
import torch
import torch.nn.functional as F

from cmat.methods import Method, Option


class EWC(Method):
    """EWC (Kirkpatrick et al. 2017): a quadratic penalty anchoring weights important to earlier tasks."""

    name = "ewc"
    options = {"ewc_lambda": Option(100.0, "λ, weight of the quadratic anchor", 0.0, 1e9)}

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.net = self.new_network(range(len(seq)))
        self.lam = self.opts["ewc_lambda"]
        self.anchors = []  # per finished task: (Fisher, θ*) over the shared parameters

    def shared(self):
        return list(self.net.features.parameters())

    def penalty(self):
        total = 0.0
        for fisher, star in self.anchors:
            total = total + sum((f * (p - s) ** 2).sum() for f, p, s in zip(fisher, self.shared(), star))
        return self.lam / 2 * total

    def train_task(self, t, task, trainer):
        def loss_fn(model, x, y, gen):  # the run's objective (PGD, TRADES, ...) plus the anchor
            loss, logits = trainer.objective.loss(model, x, y, gen)
            return loss + self.penalty(), logits

        params = self.shared() + list(self.net.heads[t].parameters())
        trainer.fit(self.net.task_view(t), params, task, t, snapshot=self.net, loss_fn=loss_fn)

    def after_task(self, t, task):
        model = self.net.task_view(t).eval()
        fisher = [torch.zeros_like(p) for p in self.shared()]
        n = 0
        size = self.cfg.train.batch_size
        for i in range(0, len(task.train), size):
            x, _ = task.train.tensors(torch.arange(i, min(i + size, len(task.train))))
            logits = model(x.to(self.device))
            loss = F.nll_loss(F.log_softmax(logits, 1), logits.argmax(1))
            grads = torch.autograd.grad(loss, self.shared())
            fisher = [f + g.detach() ** 2 for f, g in zip(fisher, grads)]
            n += 1
        self.anchors.append(([f / max(n, 1) for f in fisher], [p.detach().clone() for p in self.shared()]))

    def networks(self):
        return [self.net]

    def task_slots(self):
        return [(0, j) for j in range(len(self.seq))]
