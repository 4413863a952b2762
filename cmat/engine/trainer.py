"""Training one task: minibatches, the learning-rate schedule, the optimiser step and the
:class:`Trainer` (objective, validation, model selection, progress, TensorBoard), and what a
task's training cost."""
from __future__ import annotations

import copy
import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.autograd.graph import increment_version
from tqdm import tqdm

from cmat import accel
from cmat.attacks import PGD, sound_alpha
from cmat.bounds import CertifiedCheck
from cmat.config import bf16_mode
from cmat.errors import CmatError
from cmat.evaluate import predictions
from cmat.objectives import make_objective
from cmat.seeding import generator
from cmat.tasks.base import augment_batch
from cmat.tblog import RunLogger


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU) or a torch device name; one-line error if unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CmatError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CmatError(f"device {name!r} requested but CUDA is not available")
    return dev


def batches(data, batch_size: int, gen: torch.Generator, device, shuffle: bool = True):
    """Yield augmented float batches ``(x in [0,1], y)`` of an in-memory ``ImageData``."""
    n = len(data)
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        x, y = data.tensors(idx)
        x = augment_batch(x, data.augment, gen)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def lr_lambda(schedule: str, total: int) -> Callable:
    """Multiplier of the base learning rate at iteration ``i`` of ``total``."""
    if schedule == "cosine":
        return lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / max(total, 1)))
    if schedule == "step":
        return lambda i: 0.1 ** (int(i >= 0.5 * total) + int(i >= 0.75 * total))
    return lambda i: 1.0


def optimizer_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()``, then bump the version counter of every parameter it may have updated.

    Fused optimisers (used here: one kernel per group, 3-4× faster on CPU) write parameters
    in place *without* bumping their version counters, and cached state keyed on them -- the
    eval-mode effective weights of :mod:`cmat.nn.masked` -- would otherwise go stale.
    """
    opt.step()
    increment_version([p for group in opt.param_groups for p in group["params"] if p.grad is not None])


def make_optimizer(groups, tc, lr: float) -> torch.optim.Optimizer:
    """``train.optimizer``: ``sgd`` (momentum, Nesterov, weight decay) or ``adam`` (β = 0.9,
    0.999; weight decay as L2), fused: one kernel per parameter group instead of one per
    operation (3× on CPU, measured). A group's own ``weight_decay`` wins (CMAT's shared weights
    take theirs after backward). Entries whose gradient stays exactly zero through a phase (an
    earlier task's weights) keep their values under both: the optimiser is new every phase."""
    if tc.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=tc.weight_decay, fused=True)
    return torch.optim.SGD(groups, lr=lr, momentum=tc.momentum, nesterov=tc.nesterov and tc.momentum > 0,
                           weight_decay=tc.weight_decay, fused=True)


def majority_share(labels: torch.Tensor) -> float:
    """The share of the most frequent label: the accuracy of the best constant predictor."""
    return float(torch.bincount(labels).max()) / len(labels) if len(labels) else 0.0


def chance_floor(labels: torch.Tensor, alpha: float = 0.05) -> float:
    """The clean validation accuracy at or below which an epoch counts as degenerate: its correct
    count is not significantly above what the best constant predictor scores on ``labels`` (one-
    sided exact binomial test against the majority share, level ``alpha``). Returned half an
    image below the first significant count, so float32 accuracies compare safely (29/57 in
    float32 is above 29/57 in float64)."""
    from scipy.stats import binom

    n, share = len(labels), majority_share(labels)
    if n == 0:
        return 0.0
    k = next(k for k in range(n + 2) if k > n or binom.sf(k - 1, n, share) < alpha)  # P(X >= k) < alpha
    return (k - 0.5) / n


def select_epoch(history: list, metric: str, floor: float) -> tuple:
    """``(kept, by_metric_alone)``: the epoch model selection keeps from a validation ``history``
    (rows with ``val_clean`` and ``val_robust``) and the one the metric alone would keep.

    ``metric`` ``clean`` / ``robust``: the best ``val_<metric>``, the latest on ties, among the
    epochs that classify -- an epoch whose clean validation accuracy is not above ``floor``
    (:func:`chance_floor`: not significantly above what a constant predictor scores) is
    degenerate, and a one-class network that scores the majority share under attack never
    displaces one that classifies but is less robust; only when every epoch is degenerate are
    they all candidates. ``last``:
    the last epoch (a schedule that ends at its target), no rule."""
    if not history:
        raise ValueError("no epoch to select from")
    if metric == "last":
        return len(history) - 1, len(history) - 1

    def best(epochs):
        return max(epochs, key=lambda e: (history[e][f"val_{metric}"], e))

    every = range(len(history))
    classify = [e for e in every if history[e]["val_clean"] > floor]
    return best(classify or every), best(every)


@dataclass
class Phase:
    """What one :meth:`Trainer.fit` phase steps with: the (possibly DDP-wrapped) model, its
    optimiser and schedule, the method's extra optimisers, loss and gradient hooks, the bar."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    extras: tuple
    loss_fn: Callable
    after_backward: Optional[Callable]
    after_step: Optional[Callable]
    bar: object


class Trainer:
    """Trains one task's classifier under the run's objective, with validation model selection.

    ``fit(model, params, task, t, snapshot=...)``: SGD or Adam (:func:`make_optimizer`) over
    ``params`` with the configured schedule; per epoch, clean and PGD validation accuracy;
    the weights of ``snapshot`` (the module holding everything this task changes) from the epoch
    :func:`select_epoch` keeps (never a one-class epoch over one that classifies) are restored at
    the end. Hooks: ``after_backward()`` (mask or edit gradients) and
    ``after_step()`` (re-apply constraints) are called every iteration; ``extra_optimizers``
    (e.g. Adam over piggyback masks) step alongside the SGD optimiser; ``loss_fn`` replaces
    the objective's ``loss(model, x, y, generator) -> (loss, logits)`` (ANP-VS).
    """
    def __init__(self, cfg, device, logger: RunLogger, progress: bool = True, dist=None):
        self.cfg = cfg
        self.device = device
        self.logger = logger
        self.progress = progress
        self.dist = dist  # a cmat.distributed.Dist under torchrun, else None
        self.objective = make_objective(cfg.objective, cfg.threat)
        # validation (model selection, CMAT's goal/grow/compact decisions) uses a PGD-10 whose
        # steps can cross the ball, like the evaluation's; a certified objective validates with
        # its own certificate (certified accuracy by the objective's bound)
        bound = self.objective.certificate
        self.val_attack = CertifiedCheck(cfg.threat.eps, bound) if bound else \
            PGD(eps=cfg.threat.eps, alpha=sound_alpha(cfg.threat.eps, cfg.threat.alpha, 10), steps=10)
        self.global_step = 0
        self.grad_evals = 0  # training forward+backward passes per image, attack steps included
        self.steps = 0  # optimiser steps taken, and the wall / process-CPU seconds they took (validation excluded)
        self.step_seconds = 0.0
        self.step_cpu_seconds = 0.0
        self.val_seconds = 0.0  # validation (clean + PGD-10: model selection, CMAT's decisions) wall seconds
        self.bf16 = bf16_mode(cfg.accel.bf16) == "on"  # Run resolves ``auto`` by measuring
        self.label = ""      # e.g. "packnet s0 " under cmat bench: names the run on progress bars
        self.n_tasks = None  # for "task 2/5" on progress bars (1-based, as everywhere a user reads)
        self.selection_overrides: list = []  # choices the degenerate-epoch rule changed, not yet in a task's cost

    def task_label(self, t: int) -> str:
        return f"{self.label}task {t + 1}" + (f"/{self.n_tasks}" if self.n_tasks else "")

    def selection_metric(self) -> str:
        sel = self.cfg.train.select
        if sel == "auto":
            own = self.objective.selection  # certified: the ramp's end, "last"
            return own or ("robust" if self.objective.adversarial else "clean")
        return sel

    def validate(self, model, task, t: int) -> dict:
        """Clean accuracy on task t's validation split and robust accuracy (the validation attack,
        seeded by (seed, "val", t), so two models of one task meet the same random starts; for a
        certified objective, certified accuracy by its bound) on its first ``val_attack_samples`` images;
        ``clean_correct``/``robust_correct`` hold the per-image outcomes (bool tensors) behind them, for
        paired decisions."""
        start = time.perf_counter()
        if self.dist is not None:
            self.dist.sync_buffers(model)  # identical BN statistics, so identical decisions
        x, y = task.val.tensors()
        clean = predictions(model, x, y, None, device=self.device) == y
        k = min(self.cfg.train.val_attack_samples, len(y))
        if self.val_attack.certifies:
            right = clean[:k]  # proven needs correct clean; predictions() left the model in eval mode
            robust = right.clone()
            if right.any():
                robust[right] = self.val_attack.proven(model, x[:k][right], y[:k][right], self.device).cpu()
        else:
            robust = predictions(model, x[:k], y[:k], self.val_attack, generator(self.cfg.seed, "val", t),
                                 device=self.device) == y[:k]
        self.val_seconds += time.perf_counter() - start
        return {"clean": float(clean.float().mean()) if len(y) else 0.0,
                "robust": float(robust.float().mean()) if k else 0.0,
                "clean_correct": clean, "robust_correct": robust}

    def fit(self, model, params, task, t: int, snapshot: torch.nn.Module,
            epochs: Optional[int] = None, lr: Optional[float] = None, param_groups=None,
            after_backward: Optional[Callable] = None, after_step: Optional[Callable] = None,
            extra_optimizers=(), loss_fn: Optional[Callable] = None, tag: str = "train", warm: bool = False) -> dict:
        """Train ``params`` of ``model`` on task t for one phase (``tag``), validating after every
        epoch and keeping the selected epoch's ``snapshot`` state; ``{"best_epoch", "history"}``."""
        tc, obj = self.cfg.train, self.objective
        epochs = max(1, (epochs or tc.epochs) // obj.replays)
        groups = param_groups or [{"params": [p for p in params if p.requires_grad]}]
        opt = make_optimizer(groups, tc, lr or tc.lr)
        iters = epochs * math.ceil(len(task.train) / tc.batch_size) * obj.replays
        obj.total_iters = iters  # schedules over the phase (certified objectives' ramp)
        obj.reset(warm=warm)  # warm: continuing this task's trained model (the objective's schedules)
        accel.prepare_model(self.cfg.accel, model)
        phase = Phase(model=self.dist.wrap(model, self.device) if self.dist is not None else model, opt=opt,
                      sched=torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.schedule, iters)),
                      extras=tuple(extra_optimizers), loss_fn=loss_fn or obj.loss, after_backward=after_backward,
                      after_step=after_step,
                      bar=tqdm(total=iters, desc=f"{self.task_label(t)} {tag}", leave=False,
                               disable=not self.progress, unit="it"))
        metric, floor = self.selection_metric(), chance_floor(task.val.labels)  # floor: a constant predictor's
        best_state, best_epoch, history = None, -1, []
        for epoch in range(epochs):
            model.train()
            row = self._train_epoch(phase, task, t, tag, epoch)
            val = self.validate(model, task, t)
            row.update(val_clean=val["clean"], val_robust=val["robust"])
            history.append(row)
            self._log_epoch(phase.bar, t, tag, row)
            if select_epoch(history, metric, floor)[0] == epoch:  # the choice so far: stays, or is this epoch
                best_epoch = epoch
                best_state = copy.deepcopy(snapshot.state_dict()) if metric != "last" else None
            if obj.detects_collapse and best_epoch < epoch and val["robust"] < history[best_epoch]["val_robust"] - 0.2:
                self.logger.event(kind="collapse", task=t, epoch=epoch)
                break
        phase.bar.close()
        if best_state is not None:
            snapshot.load_state_dict(best_state)
        self._record_selection(t, tag, history, metric, floor, best_epoch)
        return {"best_epoch": best_epoch, "history": history}

    def _train_epoch(self, phase: "Phase", task, t: int, tag: str, epoch: int) -> dict:
        """One pass over the task's training images; the epoch's ``loss`` and training ``acc``."""
        gen = generator(self.cfg.seed, tag, t, epoch)
        attack_gen = gen if self.dist is None else self.dist.attack_generator(self.cfg.seed, tag, t, epoch)
        tot_loss, tot_correct, tot_n = 0.0, 0, 0
        epoch_start, epoch_cpu = time.perf_counter(), time.process_time()
        for x, y in batches(task.train, self.cfg.train.batch_size, gen, self.device):
            scale, n_global = 1.0, len(y)
            if self.dist is not None:  # every rank draws the global batch, trains on its shard
                x, y, scale = self.dist.shard(x, y)
            x = accel.prepare_batch(self.cfg.accel, x)
            for _ in range(self.objective.replays):
                loss, logits = self._step(phase, x, y, attack_gen, scale, n_global)
            tot_loss += float(loss.detach()) * len(y)
            tot_correct += int((logits.detach().argmax(1) == y).sum())
            tot_n += len(y)
        self.step_seconds += time.perf_counter() - epoch_start
        self.step_cpu_seconds += time.process_time() - epoch_cpu
        return {"epoch": epoch, "loss": tot_loss / max(tot_n, 1), "acc": tot_correct / max(tot_n, 1)}

    def _step(self, phase: "Phase", x, y, attack_gen, scale: float, n_global: int):
        """One optimiser step on a minibatch: the loss, the method's then the objective's gradient
        rules (HAT's blocking, owned weight decay; certified training's clipping), the steps."""
        with accel.autocast(self.cfg.accel, self.device, enabled=self.bf16):
            loss, logits = phase.loss_fn(phase.model, x, y, attack_gen)
        phase.opt.zero_grad(set_to_none=True)
        for extra in phase.extras:
            extra.zero_grad(set_to_none=True)
        (loss * scale if scale != 1.0 else loss).backward()
        if phase.after_backward is not None:
            phase.after_backward()
        self.objective.after_backward()
        optimizer_step(phase.opt)
        for extra in phase.extras:
            optimizer_step(extra)
        if phase.after_step is not None:
            phase.after_step()
        phase.sched.step()
        phase.bar.update(1)
        self.global_step += 1
        self.steps += 1
        self.grad_evals += self.objective.passes * n_global
        return loss, logits

    def _log_epoch(self, bar, t: int, tag: str, row: dict) -> None:
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{row['val_clean']:.3f}", rob=f"{row['val_robust']:.3f}")
        for k in ("loss", "acc", "val_clean", "val_robust"):
            self.logger.scalar(f"task_{t + 1}/{tag}_{k}", row[k], self.global_step)
        self.logger.event(kind="epoch", task=t, tag=tag, **row)

    def _record_selection(self, t: int, tag: str, history: list, metric: str, floor: float, kept: int) -> None:
        """Log (and keep for the task's ``cost`` record) a choice the degenerate-epoch rule changed."""
        alone = select_epoch(history, metric, floor)[1]
        if alone != kept:
            rec = {"task": t, "tag": tag, "kept_epoch": kept, "by_metric_alone": alone, "chance_floor": floor,
                   "degenerate_epochs": [e for e, r in enumerate(history) if r["val_clean"] <= floor]}
            self.logger.event(kind="selection_rule", **rec)
            self.selection_overrides.append(rec)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage``; Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def task_cost(trainer: "Trainer", before: tuple) -> dict:
    """What training one task cost, from the trainer's counters before (``before``) and now:
    wall seconds, optimiser steps and their seconds (``step_seconds`` = seconds per step,
    validation excluded; ``step_cpu_seconds`` the same in process CPU time, which time spent
    descheduled on a shared machine does not inflate), validation seconds and forward+backward
    passes (``grad_evals``); and, only where it happened, ``selection_rule``: the phases whose kept
    epoch the degenerate-epoch rule changed (:func:`select_epoch`; taken from the trainer)."""
    t0, steps, step_s, val_s, passes, step_cpu = before
    n = trainer.steps - steps
    out = {"train_seconds": time.perf_counter() - t0, "steps": n,
           "step_seconds": (trainer.step_seconds - step_s) / max(n, 1),
           "step_cpu_seconds": (trainer.step_cpu_seconds - step_cpu) / max(n, 1),
           "val_seconds": trainer.val_seconds - val_s, "grad_evals": trainer.grad_evals - passes}
    if trainer.selection_overrides:
        out["selection_rule"], trainer.selection_overrides = trainer.selection_overrides, []
    return out
