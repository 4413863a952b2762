"""Robustness transfer: adapt a robust source network to a new target task.

Source: task ``j`` of a finished run with plain networks (``at-individual`` or
``at-finetune``; train one with ``cmat run``, e.g. on ``cifar10-5split`` or ``mnist-5split``).
Target: task ``k`` of a target sequence with the same input shape. Strategies (Shafahi et al.
2020; the robustness-transfer study):

- ``linear``: the source feature extractor frozen, a new linear head trained.
- ``tl-K``: the last K weight layers of the extractor re-initialised and trained, the rest frozen.
- ``finetune``: every layer trained, the extractor at ``backbone_lr_scale`` × the learning rate.
- ``lwf``: like ``finetune`` plus the feature-distance penalty λ·mean|z − z₀|₁ between the
  penultimate features z of the model and z₀ of the (frozen) source on the same inputs.
- ``scratch``: a freshly initialised network of the same architecture (the baseline).

Each runs with any training objective (``standard``, ``pgd``, ..., the certified ``ibp`` and
``crown-ibp``, which train with the target preset's ``certified:`` recipe) and is evaluated by the
same harness.
**Frozen** means ``requires_grad_(False)`` *and* BatchNorm kept in eval mode (its running
statistics do not move) — the model's ``train()`` re-freezes those BN layers, so a training loop
that calls ``model.train()`` every epoch cannot unfreeze them.
"""
from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cmat import config as config_mod
from cmat.atomic import atomic_write_text
from cmat.engine import Trainer, resolve_device
from cmat.errors import CmatError
from cmat.evaluate import build_attacks, evaluate_task
from cmat.nn.layers import Normalize
from cmat.objectives import objective_names
from cmat.plots import plt
from cmat.seeding import seed_everything
from cmat.store import load as load_run
from cmat.tasks import get_tasks
from cmat.tblog import RunLogger

STRATEGY_FORMS = "linear, tl-K (K ≥ 1), finetune, lwf, scratch"


class TransferModel(nn.Module):
    """``head(features(norm(x)))`` with a set of frozen BN layers that stay in eval mode."""

    def __init__(self, norm: nn.Module, features: nn.Module, head: nn.Linear):
        super().__init__()
        self.norm, self.features, self.head = norm, features, head
        self.frozen_bn: list = []

    def embed(self, x):
        return self.features(self.norm(x))

    def verify_parts(self) -> list:
        """The modules in order, for :func:`cmat.bounds.network_ops`."""
        return [self.norm, self.features, self.head]

    def forward(self, x):
        return self.head(self.embed(x))

    def train(self, mode: bool = True):
        super().train(mode)
        for bn in self.frozen_bn:
            bn.eval()
        return self

    def freeze(self, module: nn.Module) -> None:
        """``requires_grad_(False)`` on ``module`` and BN layers inside it held in eval mode."""
        module.requires_grad_(False)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                self.frozen_bn.append(m)
                m.eval()


def weight_layers(features: nn.Module) -> list:
    return [m for m in features.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# tl-K's default K: the extractor's last convolutional unit and the fully connected layers after
# it -- smallcnn: conv4 + FC (2 of 5), vgg16: conv13 + FC + FC (3 of 15), resnet18: the last
# basic block's two convolutions (2 of 20).
DEFAULT_TL_K = {"smallcnn": 2, "vgg16": 3, "resnet18": 2}


def default_tl_k(arch: str) -> int:
    return DEFAULT_TL_K.get(arch, 2)


def build_transfer_model(source, strategy: str, num_classes: int, target_stats=None) -> tuple:
    """``(model, kind)`` for ``strategy`` from a source ``TaskView`` (plain net); ``kind`` says
    which parameters train (see :func:`param_groups`). ``scratch`` takes the architecture only,
    normalised with ``target_stats = (mean, std)`` of the target task when given."""
    net, t = source.net, source.task
    if getattr(net, "spec", {}).get("masked") or not hasattr(net, "features"):
        raise CmatError("transfer needs a plain-network source (an at-individual or at-finetune run)")
    norm = copy.deepcopy(net.norms[t])
    if strategy == "scratch" and target_stats is not None:
        norm = Normalize(*target_stats)
    features = copy.deepcopy(net.features)
    head = nn.Linear(net.feature_dim, num_classes)
    model = TransferModel(norm, features, head)
    model.norm.requires_grad_(False)
    if strategy == "scratch":
        for m in features.modules():
            if hasattr(m, "reset_parameters") and m is not features:
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        return model, "all"
    if strategy == "linear":
        model.freeze(features)
        return model, "head"
    match = re.fullmatch(r"tl-(\d+)", strategy)
    if match:
        k = int(match.group(1))
        layers = weight_layers(features)
        if not 1 <= k <= len(layers):
            raise CmatError(f"strategy {strategy}: K must be in 1..{len(layers)} for this network")
        model.freeze(features)
        mods = list(features.modules())
        first = mods.index(layers[-k])
        for m in mods[first:]:
            if m is features:
                continue
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                m.reset_parameters()
                m.requires_grad_(True)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m in model.frozen_bn:
                model.frozen_bn.remove(m)
        return model, "trainable"
    if strategy in ("finetune", "lwf"):
        return model, "scaled"
    raise CmatError(f"unknown transfer strategy {strategy!r} (valid: {STRATEGY_FORMS})")


def param_groups(model: TransferModel, kind: str, lr: float, backbone_scale: float) -> list:
    head = list(model.head.parameters())
    if kind == "head":
        return [{"params": head}]
    if kind == "scaled":
        return [{"params": head}, {"params": list(model.features.parameters()), "lr": lr * backbone_scale}]
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def lwf_loss(model: TransferModel, source: TransferModel, objective, lam: float):
    """Objective loss on (adversarial) inputs + λ·mean|z − z₀|₁ on penultimate features. With a
    certified objective (no attack; its loss bounds the whole ball): the objective's own loss +
    λ·mean|z − z₀|₁ on the clean inputs."""
    attack = getattr(objective, "attack", None)

    def certified_loss_fn(train_model, x, y, gen):
        loss, logits = objective.loss(train_model, x, y, gen)
        with torch.no_grad():
            z0 = source.embed(x)
        return loss + lam * (model.embed(x) - z0).abs().mean(), logits

    if objective.certified:
        return certified_loss_fn

    def loss_fn(_, x, y, gen):
        x_in = attack(model, x, y, generator=gen) if attack is not None else x
        z = model.embed(x_in)
        logits = model.head(z)
        with torch.no_grad():
            z0 = source.embed(x_in)
        return F.cross_entropy(logits, y) + lam * (z - z0).abs().mean(), logits

    return loss_fn


def check_compatible(spec: dict, task) -> None:
    """The source network must take the target's images as they are (channels and size)."""
    shape = tuple(task.input_shape)
    if shape[0] != spec["in_channels"] or shape[-1] != spec["input_size"]:
        raise CmatError(f"the source takes {spec['in_channels']}×{spec['input_size']}×{spec['input_size']} images, "
                        f"the target task {task.name} has {'×'.join(map(str, shape))}")


def train_transfer(source_view, strategy: str, objective: str, task, target_task: int, cfg, device, logger,
                   progress: bool = True, label: str = "") -> tuple:
    """Train ``strategy`` with target ``objective`` on ``task``: ``(model, seconds, grad_evals)``,
    grad_evals = forward+backward passes per image spent on the target, attack steps included
    (the source's own training is not counted)."""
    seed_everything(cfg.seed)
    cfg_o = copy.deepcopy(cfg)
    cfg_o.objective.name = objective
    trainer = Trainer(cfg_o, device, logger, progress)
    trainer.label = label
    stats = (task.mean, task.std) if strategy == "scratch" else None
    model, kind = build_transfer_model(source_view, strategy, task.num_classes, stats)
    model.to(device)
    opts = {"backbone_lr_scale": 0.1, "lwf_lambda": 0.1, **cfg.method_options}
    groups = param_groups(model, kind, cfg.train.lr, float(opts["backbone_lr_scale"]))
    loss_fn = None
    if strategy == "lwf":
        src, _ = build_transfer_model(source_view, "finetune", task.num_classes)
        src.to(device).eval().requires_grad_(False)
        loss_fn = lwf_loss(model, src, trainer.objective, float(opts["lwf_lambda"]))
    start = time.time()
    trainer.fit(model, None, task, target_task, snapshot=model, param_groups=groups, loss_fn=loss_fn,
                tag=f"{strategy}-{objective}")
    return model.eval(), time.time() - start, trainer.grad_evals


def run_transfer(source_dir, source_task: int, target_tasks: str, target_task: int, strategies, objectives,
                 out, cfg_overrides: dict, progress: bool = True) -> dict:
    """Every strategy × objective on the target task; writes transfer.json/.csv/.md."""
    run = load_run(source_dir)
    if not 0 <= source_task < len(run.task_names):
        raise CmatError(f"source task {source_task} out of range (0..{len(run.task_names) - 1})")
    source_view = run.model(source_task)
    cfg = config_mod.resolve(target_tasks, None, cfg_overrides)
    for o in objectives:
        if o not in objective_names():
            raise CmatError(f"unknown transfer objective {o!r} (valid: {', '.join(objective_names())})")
    # each objective trains with the target preset's recipe for it (certified: its certified block)
    configs = {o: config_mod.resolve(target_tasks, None, config_mod.deep_update(
        copy.deepcopy(cfg_overrides), {"objective": {"name": o}})) for o in objectives}
    seq = get_tasks(cfg.tasks, data_root=cfg.data_root, download=cfg.download, seed=cfg.seed,
                    val_fraction=cfg.train.val_fraction)
    if not 0 <= target_task < len(seq):
        raise CmatError(f"target task {target_task} out of range (0..{len(seq) - 1})")
    task = seq[target_task]
    spec = source_view.net.spec
    check_compatible(spec, task)
    for s in strategies:
        build_transfer_model(source_view, s, task.num_classes)  # validate names first
    eval_names = list(cfg.eval.attacks)
    if any(o in config_mod.CERTIFIED_OBJECTIVES for o in objectives) and "certified" not in eval_names:
        eval_names.append("certified")  # every row on the same columns, certified ones included
    device = resolve_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config_mod.to_yaml(cfg))
    logger = RunLogger(out)
    rows = []
    try:
        for strategy in strategies:
            for objective in objectives:
                model, seconds, grad_evals = train_transfer(source_view, strategy, objective, task, target_task,
                                                            configs[objective], device, logger, progress)
                attacks = build_attacks(eval_names, cfg.threat.eps, cfg.threat.alpha, task.num_classes)
                res = evaluate_task(model.eval(), task.test, attacks, task.num_classes, cfg.seed, target_task,
                                    cfg.eval.samples, cfg.eval.batch_size, device)
                columns = [n for n in res if n in attacks or n == "worst"]
                row = {"strategy": strategy, "objective": objective, **{n: res[n]["acc"] for n in columns},
                       "train_seconds": seconds, "grad_evals": grad_evals,
                       "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
                rows.append(row)
                logger.event(kind="transfer", **row)
    finally:
        logger.close()
    report = {"source": str(source_dir), "source_task": source_task, "target": cfg.tasks, "target_task": target_task,
              "threat": {"eps": cfg.threat.eps, "alpha": cfg.threat.alpha}, "rows": rows}
    return _write_report(report, out)


def _write_report(report: dict, out: Path) -> dict:
    """transfer.json, .csv, .md and the plot; the report with its ``markdown``."""
    rows = report["rows"]
    atomic_write_text(out / "transfer.json", json.dumps(report, indent=1))
    keys = list(rows[0])
    atomic_write_text(out / "transfer.csv", ",".join(keys) + "\n" +
                      "\n".join(",".join(str(r[k]) for k in keys) for r in rows) + "\n")
    md = ["| strategy | objective | " + " | ".join(k for k in keys[2:]) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        md.append(f"| {r['strategy']} | {r['objective']} | " +
                  " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys[2:]) + " |")
    report["markdown"] = "\n".join(md) + "\n"
    atomic_write_text(out / "transfer.md", report["markdown"])
    _plot(rows, out)
    return report


def _plot(rows, out: Path) -> None:
    labels = [f"{r['strategy']}\n{r['objective']}" for r in rows]
    attacks = [k for k in ("clean", "pgd10", "pgd40") if k in rows[0]]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.5))
    width = 0.8 / len(attacks)
    for i, a in enumerate(attacks):
        ax.bar([j + i * width for j in range(len(rows))], [r[a] for r in rows], width, label=a)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=110)
    plt.close(fig)
