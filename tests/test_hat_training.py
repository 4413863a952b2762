"""HAT trains as its paper does: the gate embeddings take plain SGD steps (no momentum) while
the other weights keep the run's optimiser, and the attack inside training sees the soft gates
σ(s·e) the loss trains, not the hard gates validation uses."""
import torch

from cmat.catalog import method_class
from cmat.engine import Trainer
from cmat.engine.trainer import make_optimizer
from cmat.tasks import tasks_for_config
from cmat.tblog import RunLogger
from tests.helpers import quick_config


def hat(objective="pgd"):
    cfg = quick_config(method="hat", objective=objective, epochs=1, train={"samples": 64, "val_attack_samples": 8})
    seq = tasks_for_config(cfg)
    method = method_class("hat")(cfg, seq, "cpu")
    method.before_task(0, seq[0])
    return cfg, seq, method


def test_embeddings_take_plain_sgd_steps_and_shared_weights_keep_momentum():
    cfg, _, method = hat()
    assert cfg.train.optimizer == "sgd" and cfg.train.momentum > 0  # the preset's optimiser has momentum
    groups = method.param_groups(0)
    opt = make_optimizer(groups, cfg.train, cfg.train.lr)
    emb = method.net.gates()[0].emb["0"]
    shared = method.net.weight_layers()[0][0].weight
    e0, w0 = emb.detach().clone(), shared.detach().clone()
    for _ in range(3):  # the same gradient three times: plain SGD moves 3·lr, momentum more
        for group in groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        opt.step()
    assert torch.allclose(e0 - emb.detach(), torch.full_like(e0, 3 * cfg.train.lr))
    assert bool(((w0 - shared.detach()) > 3.5 * cfg.train.lr).all())
    trained = {id(p) for g in groups for p in g["params"]}
    assert all(id(g.emb["0"]) in trained for g in method.net.gates())


def test_the_training_attack_sees_the_soft_gates_the_loss_trains():
    cfg, seq, method = hat()
    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(None), progress=False)
    loss_fn = method._loss_fn(0, trainer, batches_per_epoch=4)
    gates = method.net.gates()
    s0 = 1 / method.smax  # the first batch of an epoch: the annealing's start
    seen = []

    def hook(gate, inputs, output):
        if not isinstance(output, torch.Tensor):
            return  # a symbolic trace of the network (torch.fx), not a forward pass
        soft = torch.sigmoid(s0 * gate.emb["0"]).view((1, -1) + (1,) * (output.dim() - 2))
        seen.append((gate.training, torch.allclose(output, inputs[0] * soft)))

    handles = [g.register_forward_hook(hook) for g in gates]
    x, y = seq[0].train.tensors(torch.arange(16))
    model = method.net.task_view(0)
    model.train()
    loss, _ = loss_fn(model, x, y, torch.Generator().manual_seed(0))
    for h in handles:
        h.remove()
    attack = [soft for training, soft in seen if not training]  # the attack runs in eval mode
    assert len(attack) >= cfg.objective.steps * len(gates)  # every PGD step went through every gate
    assert all(soft for _, soft in seen)  # attack and loss alike: σ(s·e) at the current s
    assert bool(torch.isfinite(loss))
    model.eval()  # validation: hard gates 1[e > 0], no longer soft after the loss
    g = gates[0]
    assert torch.equal(g.gate(0), (g.emb["0"] > 0).float())
