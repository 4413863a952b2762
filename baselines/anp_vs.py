"""ANP-VS: Adversarial Neural Pruning with Vulnerability Suppression (Madaan et al. 2020).

One pruned network per task. Every BN output channel gets a beta-Bernoulli mask
(Lee et al. 2018): π ~ Beta(α₀ = 1e-4, β₀ = 1) prior, a Kumaraswamy(a, b) posterior sampled by
reparameterisation, z ~ RelaxedBernoulli(π) with temperature τ = 0.1 while training; at test
time z = E[π]·1[E[π] > 1e-3] (channels at or below 1e-3 are pruned). The training loss is

    L = (CE(f(x), y) + 2·CE(f(x_adv), y)) / 3 + β·KL/N + λ·V,
    V = mean over masked layers of mean |h_clean − h_adv|

with h the masked activations, x_adv from the run's objective attack (PGD by default; with the
``standard`` objective the adversarial terms drop out), N the training-set size. Options
(``method_options``): ``kl_weight`` β (1.0), ``vs_weight`` λ (0.01), ``mask_lr`` (Adam's
learning rate for the mask parameters log a, log b; 0.01).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cmat.errors import CmatError
from cmat.methods import Method, Option, register
from cmat.nn.beta_bernoulli import PRUNE_AT, BetaBernoulliMask
from cmat.nn.multihead import MultiHeadNet

SUPPORTED_OBJECTIVES = ("standard", "pgd", "fast")  # the ones whose attack the ANP-VS loss can use


@register
class ANPVS(Method):
    """ANP-VS (Madaan et al. 2020): adversarial neural pruning with Beta-Bernoulli dropout, one network per task."""
    name = "anp-vs"
    options = {
        "kl_weight": Option(1.0, "β, weight of the Beta-Bernoulli KL term", 0.0, 1e6),
        "vs_weight": Option(0.01, "λ, weight of the vulnerability suppression term", 0.0, 1e6),
        "mask_lr": Option(0.01, "Adam lr of the dropout-mask parameters", 1e-12, 10.0),
    }

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.kl_weight, self.vs_weight, self.mask_lr = (self.opts[k] for k in ("kl_weight", "vs_weight", "mask_lr"))
        if cfg.objective.name not in SUPPORTED_OBJECTIVES:  # its own loss uses the objective's attack only
            raise CmatError(f"anp-vs trains with its own adversarial loss and supports the objectives "
                            f"{', '.join(SUPPORTED_OBJECTIVES)}; got {cfg.objective.name!r}")
        self.nets = []
        self.decisions = {"tasks": []}

    def new_network(self, task_indices):
        t = self.seq[task_indices[0]]
        c, h, _ = t.input_shape
        return MultiHeadNet(self.cfg.model.arch, c, h, [t.num_classes], [t.mean], [t.std], self.cfg.model.width,
                            norm_layer="beta-bernoulli").to(self.device)

    def before_task(self, t, task):
        self.nets.append(self.new_network([t]))

    @staticmethod
    def masks(net) -> list:
        return [m for m in net.modules() if isinstance(m, BetaBernoulliMask)]

    def loss(self, net, n_train):
        """The ANP-VS loss as a Trainer ``loss_fn`` for ``net``'s only task."""
        obj_attack = getattr(self.trainer_objective, "attack", None)
        masks = self.masks(net)
        model = net.task_view(0)

        def loss_fn(_, x, y, gen):
            logits = model(x)
            clean_feats = [m.last for m in masks]
            total = F.cross_entropy(logits, y)
            if obj_attack is not None:
                x_adv = obj_attack(model, x, y, generator=gen)
                logits_adv = model(x_adv)
                vuln = torch.stack([(c - m.last).abs().mean() for c, m in zip(clean_feats, masks)]).mean()
                total = (total + 2 * F.cross_entropy(logits_adv, y)) / 3 + self.vs_weight * vuln
                self.last_vulnerability = float(vuln.detach())
            kl = torch.stack([m.kl() for m in masks]).sum()
            return total + self.kl_weight * kl / n_train, logits

        return loss_fn

    def evaluations_of(self, j, n_tasks):
        return 1  # one network per task

    def train_task(self, t, task, trainer):
        net = self.nets[t]
        self.trainer_objective = trainer.objective
        mask_params = [p for m in self.masks(net) for p in m.parameters()]
        ids = {id(p) for p in mask_params}
        weights = [p for p in net.parameters() if id(p) not in ids]
        adam = torch.optim.Adam(mask_params, lr=self.mask_lr, fused=True)
        trainer.fit(net.task_view(0), None, task, t, snapshot=net, param_groups=[{"params": weights}],
                    extra_optimizers=[adam], loss_fn=self.loss(net, len(task.train)))
        pruned, total = self.channel_sparsity(net)
        self.decisions["tasks"].append({"task": t, "channels_pruned": pruned, "channels": total,
                                        "channel_sparsity": pruned / max(total, 1)})
        trainer.logger.scalar("anp/channel_sparsity", pruned / max(total, 1), t)

    def channel_sparsity(self, net) -> tuple:
        with torch.no_grad():
            e = torch.cat([m.expected() for m in self.masks(net)])
        return int((e <= PRUNE_AT).sum()), int(e.numel())

    def restore(self, networks, decisions):
        self.nets = list(networks)
        self.decisions = decisions

    def networks(self):
        return self.nets

    def task_slots(self):
        return [(j, 0) for j in range(len(self.nets))]
