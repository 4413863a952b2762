"""The task-sequence engine: one readable loop over tasks, a per-task trainer, the harness.

``run(cfg, out)``: for each task t — the method's hooks train it; then every seen task j ≤ t is
evaluated under every configured attack, filling ``acc[attack][t][j]``. At the end
``results.json`` (the contract in DESIGN.md), ``store.h5`` and ``config.yaml`` are written,
each atomically, and a summary table is printed.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.autograd.graph import increment_version
from tqdm import tqdm

from cmat import accel
from cmat.atomic import atomic_write_text  # noqa: F401 (re-exported: bench, transfer, report use it)
from cmat import config as config_mod
from cmat.attacks import PGD, sound_alpha
from cmat.errors import CmatError
from cmat.evaluate import (FrozenCheck, attack_params, build_attacks, evaluate_task, model_fingerprint,
                           result_columns, robust_accuracy)
from cmat.methods import method_class
from cmat.metrics import summarize, wilson_interval
from cmat.objectives import make_objective
from cmat.seeding import generator, seed_everything
from cmat.tblog import RunLogger
from tasks import tasks_for_config
from tasks.base import augment_batch


def resolve_device(name: str) -> torch.device:
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


class Trainer:
    """Trains one task's classifier under the run's objective, with validation model selection.

    ``fit(model, params, task, t, snapshot=...)``: SGD (momentum, Nesterov, weight decay) over
    ``params`` with the configured schedule; per epoch, clean and PGD validation accuracy;
    the weights of ``snapshot`` (the module holding everything this task changes) from the best
    epoch are restored at the end. Hooks: ``after_backward()`` (mask or edit gradients) and
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
        # steps can cross the ball, like the evaluation's
        self.val_attack = PGD(eps=cfg.threat.eps, alpha=sound_alpha(cfg.threat.eps, cfg.threat.alpha, 10), steps=10)
        self.global_step = 0
        self.grad_evals = 0  # training forward+backward passes per image, attack steps included
        self.steps = 0  # optimiser steps taken, and the wall / process-CPU seconds they took (validation excluded)
        self.step_seconds = 0.0
        self.step_cpu_seconds = 0.0
        self.val_seconds = 0.0  # validation (clean + PGD-10: model selection, CMAT's decisions) wall seconds
        self.bf16 = accel.bf16_mode(cfg.accel.bf16) == "on"  # Run resolves ``auto`` by measuring
        self.label = ""      # e.g. "packnet s0 " under cmat bench: names the run on progress bars
        self.n_tasks = None  # for "task 2/5" on progress bars (1-based, as everywhere a user reads)

    def task_label(self, t: int) -> str:
        return f"{self.label}task {t + 1}" + (f"/{self.n_tasks}" if self.n_tasks else "")

    def selection_metric(self) -> str:
        sel = self.cfg.train.select
        if sel == "auto":
            own = getattr(self.objective, "selection", None)  # certified: the ramp's end, "last"
            return own or ("robust" if self.objective.adversarial else "clean")
        return sel

    def validate(self, model, task, t: int) -> dict:
        start = time.perf_counter()
        if self.dist is not None:
            self.dist.sync_buffers(model)  # identical BN statistics, so identical decisions
        x, y = task.val.tensors()
        clean = robust_accuracy(model, x, y, None, device=self.device)
        k = min(self.cfg.train.val_attack_samples, len(y))
        robust = robust_accuracy(model, x[:k], y[:k], self.val_attack, generator(self.cfg.seed, "val", t),
                                 device=self.device)
        self.val_seconds += time.perf_counter() - start
        return {"clean": clean, "robust": robust}

    def fit(self, model, params, task, t: int, snapshot: torch.nn.Module,
            epochs: Optional[int] = None, lr: Optional[float] = None, param_groups=None,
            after_backward: Optional[Callable] = None, after_step: Optional[Callable] = None,
            extra_optimizers=(), loss_fn: Optional[Callable] = None, tag: str = "train") -> dict:
        tc = self.cfg.train
        obj = self.objective
        epochs = max(1, (epochs or tc.epochs) // obj.replays)
        groups = param_groups or [{"params": [p for p in params if p.requires_grad]}]
        # fused: one kernel per parameter group instead of one per operation (3× on CPU, measured)
        opt = torch.optim.SGD(groups, lr=lr or tc.lr, momentum=tc.momentum, nesterov=tc.nesterov and tc.momentum > 0,
                              weight_decay=tc.weight_decay, fused=True)
        iters = epochs * math.ceil(len(task.train) / tc.batch_size) * obj.replays
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.schedule, iters))
        obj.total_iters = iters  # schedules over the phase (certified objectives' ramp)
        obj.reset()
        accel.prepare_model(self.cfg.accel, model)
        train_model = self.dist.wrap(model, self.device) if self.dist is not None else model
        metric = self.selection_metric()
        best, best_state, best_epoch, history = -1.0, None, -1, []
        bar = tqdm(total=iters, desc=f"{self.task_label(t)} {tag}", leave=False, disable=not self.progress, unit="it")
        for epoch in range(epochs):
            model.train()
            gen = generator(self.cfg.seed, tag, t, epoch)
            attack_gen = gen if self.dist is None else self.dist.attack_generator(self.cfg.seed, tag, t, epoch)
            tot_loss, tot_correct, tot_n = 0.0, 0, 0
            epoch_start, epoch_cpu = time.perf_counter(), time.process_time()
            for x, y in batches(task.train, tc.batch_size, gen, self.device):
                scale, n_global = 1.0, len(y)
                if self.dist is not None:  # every rank draws the global batch, trains on its shard
                    x, y, scale = self.dist.shard(x, y)
                x = accel.prepare_batch(self.cfg.accel, x)
                for _ in range(obj.replays):
                    with accel.autocast(self.cfg.accel, self.device, enabled=self.bf16):
                        loss, logits = (loss_fn or obj.loss)(train_model, x, y, attack_gen)
                    opt.zero_grad(set_to_none=True)
                    for extra in extra_optimizers:
                        extra.zero_grad(set_to_none=True)
                    (loss * scale if scale != 1.0 else loss).backward()
                    obj.after_backward()
                    if after_backward is not None:
                        after_backward()
                    optimizer_step(opt)
                    for extra in extra_optimizers:
                        optimizer_step(extra)
                    if after_step is not None:
                        after_step()
                    sched.step()
                    bar.update(1)
                    self.global_step += 1
                    self.steps += 1
                    self.grad_evals += obj.passes * n_global
                tot_loss += float(loss.detach()) * len(y)
                tot_correct += int((logits.detach().argmax(1) == y).sum())
                tot_n += len(y)
            self.step_seconds += time.perf_counter() - epoch_start
            self.step_cpu_seconds += time.process_time() - epoch_cpu
            val = self.validate(model, task, t)
            row = {"epoch": epoch, "loss": tot_loss / max(tot_n, 1), "acc": tot_correct / max(tot_n, 1),
                   "val_clean": val["clean"], "val_robust": val["robust"]}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{val['clean']:.3f}", rob=f"{val['robust']:.3f}")
            for k in ("loss", "acc", "val_clean", "val_robust"):
                self.logger.scalar(f"task_{t + 1}/{tag}_{k}", row[k], self.global_step)
            self.logger.event(kind="epoch", task=t, tag=tag, **row)
            score = val[metric] if metric in val else float(epoch)
            if metric == "last" or score >= best:
                best, best_epoch = score, epoch
                best_state = copy.deepcopy(snapshot.state_dict()) if metric != "last" else None
            if obj.detects_collapse and best_epoch < epoch and val["robust"] < history[best_epoch]["val_robust"] - 0.2:
                self.logger.event(kind="collapse", task=t, epoch=epoch)
                break
        bar.close()
        if best_state is not None:
            snapshot.load_state_dict(best_state)
        return {"best_epoch": best_epoch, "history": history}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage``; Linux reports KiB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def task_cost(trainer: "Trainer", before: tuple) -> dict:
    """What training one task cost, from the trainer's counters before (``before``) and now:
    wall seconds, optimiser steps and their seconds (``step_seconds`` = seconds per step,
    validation excluded; ``step_cpu_seconds`` the same in process CPU time, which time spent
    descheduled on a shared machine does not inflate), validation seconds and forward+backward
    passes (``grad_evals``)."""
    t0, steps, step_s, val_s, passes, step_cpu = before
    n = trainer.steps - steps
    return {"train_seconds": time.perf_counter() - t0, "steps": n,
            "step_seconds": (trainer.step_seconds - step_s) / max(n, 1),
            "step_cpu_seconds": (trainer.step_cpu_seconds - step_cpu) / max(n, 1),
            "val_seconds": trainer.val_seconds - val_s, "grad_evals": trainer.grad_evals - passes}


class Run:
    """One run of one method over one task sequence, writing into ``out``.

    After every task a checkpoint (``checkpoint.h5``: the store of the tasks so far, the
    accuracy rows, the random-generator state) is written atomically; Ctrl-C leaves it in
    place and ``resume=True`` continues from it, ending with exactly the results an
    uninterrupted run gets. The finished run replaces it by ``store.h5`` and ``results.json``.
    """

    def __init__(self, cfg, out, progress: bool = True, verbose: bool = True, resume: bool = False,
                 label: Optional[str] = None):
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress
        self.verbose = verbose
        self.resume = resume
        self.label = label  # names the run on every line it prints (cmat bench: "packnet s0")
        self.dist = None  # set under torchrun (cmat.distributed)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run directory and prints (rank 0, or no torchrun)."""
        return self.dist is None or self.dist.is_main

    def say(self, msg: str) -> None:
        if self.verbose and self.is_main:
            tqdm.write(f"[{self.label or 'cmat'}] {msg}")

    def execute(self) -> dict:
        cfg = self.cfg
        seq = tasks_for_config(cfg)
        method_cls = method_class(cfg.method)
        device = resolve_device(cfg.device)
        attacks = build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha,
                                n_classes=max(t.num_classes for t in seq), alphas=cfg.eval.alphas)
        make_objective(cfg.objective, cfg.threat)  # validate before any output is written
        self._join_torchrun(device)
        if self.dist is not None and device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)
        checkpoint = self.out / "checkpoint.h5"
        state = None
        if self.resume:
            from cmat.store import read_checkpoint

            if not checkpoint.exists():
                raise CmatError(f"nothing to resume in {self.out} (no checkpoint.h5)")
            state = read_checkpoint(checkpoint, cfg)
        seed_everything(cfg.seed, cfg.deterministic)
        method = method_cls(cfg, seq, device)  # method options are checked before anything is written
        if self.is_main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CmatError(f"cannot create the run directory {self.out}: {err.strerror}") from None
            if not os.access(self.out, os.W_OK | os.X_OK):
                raise CmatError(f"the run directory {self.out} is not writable (read-only file system or permissions)")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.is_main:
            atomic_write_text(self.out / "config.yaml", config_mod.to_yaml(cfg))
        logger = RunLogger(self.out, enabled=self.is_main)
        self._resolve_precision(seq, method, device, state)
        self.estimate = self._estimate(seq, method, device) if state is None else None
        try:
            return self._loop(seq, method, device, attacks, logger, state)
        except KeyboardInterrupt:
            logger.event(kind="interrupted")
            if checkpoint.exists():
                raise CmatError(f"interrupted; tasks finished so far are checkpointed in {checkpoint}: "
                                f"continue with the same command plus --resume") from None
            raise CmatError("interrupted before the first task finished; nothing to resume") from None
        finally:
            logger.close()
            if self.dist is not None:
                self.dist.close()

    def estimate_only(self) -> dict:
        """What :meth:`execute` would print before training, without training or writing anything."""
        cfg = self.cfg
        seq = tasks_for_config(cfg)
        device = resolve_device(cfg.device)
        make_objective(cfg.objective, cfg.threat)
        seed_everything(cfg.seed, cfg.deterministic)
        method = method_class(cfg.method)(cfg, seq, device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self._resolve_precision(seq, method, device, None)
        return self._estimate(seq, method, device)

    def _resolve_precision(self, seq, method, device, state) -> None:
        if state is not None and "precision" in state:  # a resumed run keeps the precision it chose
            self.precision = state["precision"]
            return
        self.precision = accel.resolve_bf16(self.cfg, seq[0], device, masked=getattr(method, "masked", False))
        p = self.precision
        if p["mode"] == "auto":
            self.say(f"accel.bf16=auto: a training step under bf16 autocast runs at {p['speedup']:.2f}× float32's speed "
                     f"on {device.type} → training in {'bf16' if p['bf16'] else 'float32'} "
                     f"(bf16 needs ≥ {accel.AUTO_MIN_SPEEDUP}×); validation and evaluation stay float32")

    def _estimate(self, seq, method, device) -> Optional[dict]:
        """Measure the training pass rate on this device and print what the run will cost."""
        from cmat import estimate

        p = self.precision
        if p["mode"] == "auto":  # measured already, both ways
            rate = p["bf16_pass_seconds"] if p["bf16"] else p["fp32_pass_seconds"]
        else:
            rate = estimate.measure_pass_seconds(self.cfg, seq[0], device, masked=getattr(method, "masked", False),
                                                 bf16=p["bf16"])
        est = estimate.estimate(self.cfg, seq, method, device, rate)
        for line in estimate.describe(est).splitlines():
            self.say(line)
        return est

    def _join_torchrun(self, device) -> None:
        from cmat import distributed

        if distributed.world_size() > 1:
            distributed.check_supported(self.cfg.method, self.cfg.objective.name)
        self.dist = distributed.from_env(device)

    def _loop(self, seq, method, device, attacks, logger, state) -> dict:
        from cmat.outcomes import write_outcomes
        from cmat.store import save_checkpoint, save_run

        cfg = self.cfg
        trainer = Trainer(cfg, device, logger, self.progress and self.is_main, self.dist)
        trainer.bf16 = self.precision["bf16"]
        trainer.label, trainer.n_tasks = (f"{self.label} " if self.label else ""), len(seq)
        columns = result_columns(attacks)
        acc = {name: [] for name in columns}
        clean_full: list = []
        last: dict = {}
        spent, first, eval_spent = 0.0, 0, 0.0  # spent: wall seconds so far, evaluation included
        if state is not None:
            method.restore([net.to(device) for net in state["networks"]], state["decisions"])
            acc, last, spent, first = state["acc"], state["last"], state["train_seconds"], state["completed"]
            eval_spent = state.get("eval_seconds", 0.0)
            clean_full = state.get("clean_full", acc.get("clean", []))
            trainer.global_step = state["global_step"]
            trainer.grad_evals = int(state.get("grad_evals", 0))
            torch.set_rng_state(state["rng"])
            self.say(f"resuming after task {first}/{len(seq)}")
        per_task = list(state.get("per_task", [])) if state is not None else []
        start = time.time() - spent
        final: list = []
        cache, previous = {}, {}  # (task, model fingerprint) → evaluation; task → its latest one
        frozen = {}  # task → FrozenCheck, for methods that declare a learned task's function frozen
        for t in range(first, len(seq)):
            task = seq[t]
            self.say(f"task {t + 1}/{len(seq)}: {task.name} ({task.num_classes} classes, "
                     f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test)")
            before = (time.perf_counter(), trainer.steps, trainer.step_seconds, trainer.val_seconds, trainer.grad_evals,
                      trainer.step_cpu_seconds)
            method.before_task(t, task)
            method.train_task(t, task, trainer)
            method.after_task(t, task)
            cost = task_cost(trainer, before)
            row = {name: [] for name in columns}
            full_row, final = [], []
            eval_start, eval_cpu = time.time(), time.process_time()
            bar = tqdm(total=(t + 1) * (len(attacks) - 1), desc=f"{trainer.task_label(t)} eval", leave=False,
                       disable=not (self.progress and self.is_main), unit="attack")
            # frozen tasks probed this round: the PROBES_PER_TASK checked longest ago (O(1) per task);
            # the rest reuse their evaluation until their turn or the end-of-run fingerprint check
            probe = set(sorted(frozen, key=lambda k: frozen[k].checked_after)[:FrozenCheck.PROBES_PER_TASK])
            for j in range(t + 1):
                def status(name, j=j):
                    bar.set_postfix_str(f"task {j + 1} {seq[j].name}: {name}")
                    bar.update(1)

                model = method.model_for(j)
                if j in frozen and (j not in probe or frozen[j].unchanged(model, t)):
                    res = previous[j]  # declared frozen (and, when probed, the same logits bit for bit)
                    bar.update(len(attacks) - 1)
                else:
                    key = (j, model_fingerprint(model))
                    if key in cache:  # unchanged since its last evaluation: the same bits, no attacks
                        res = cache[key]
                        bar.update(len(attacks) - 1)
                    else:
                        res = self._evaluate(seq, j, model, device, progress=status)
                        cache = {k: v for k, v in cache.items() if v is not previous.get(j)}
                        cache[key], previous[j] = res, res
                    if method.evaluations_of(j, len(seq)) == 1:  # the method declares j frozen from now on
                        frozen[j] = FrozenCheck(model, seq[j].test, res["clean"]["indices"], key[1], device, t)
                for name in columns:
                    row[name].append(res[name]["acc"])
                    logger.scalar(f"eval/{name}/task_{j + 1}_{seq[j].name}", res[name]["acc"], t + 1)
                full_row.append(res["clean"]["acc_full"])
                last[str(j)] = {name: {k: res[name][k] for k in ("acc", "f1", "n")} for name in columns}
                final.append(res)
            bar.close()
            eval_spent += time.time() - eval_start
            cost["eval_seconds"] = time.time() - eval_start
            cost["eval_cpu_seconds"] = time.process_time() - eval_cpu
            for name in columns:
                acc[name].append(row[name])
            clean_full.append(full_row)
            logger.event(kind="eval", task=t, acc={n: row[n] for n in columns})
            self.say("  after task {}: ".format(t + 1) + "  ".join(f"{n}={sum(r) / len(r):.3f}" for n, r in row.items()))
            cost["peak_rss_mb"] = peak_rss_mb()
            per_task.append(cost)
            if t < len(seq) - 1 and self.is_main:
                ckpt_start = time.perf_counter()
                path = save_checkpoint(self.out / "checkpoint.h5", method, seq, cfg,
                                       {"completed": t + 1, "acc": acc, "clean_full": clean_full, "last": last,
                                        "train_seconds": time.time() - start, "eval_seconds": eval_spent,
                                        "global_step": trainer.global_step, "grad_evals": trainer.grad_evals,
                                        "per_task": per_task, "precision": self.precision},
                                       torch.get_rng_state())
                cost["checkpoint_seconds"] = time.perf_counter() - ckpt_start
                cost["store_bytes"] = path.stat().st_size
        check_start = time.time()
        for j, check in frozen.items():
            if check.evaluated_after < len(seq) - 1 and model_fingerprint(method.model_for(j)) != check.fingerprint:
                self.say(f"warning: task {j + 1}'s model changed after its evaluation although {cfg.method} declares "
                         "it frozen; re-evaluating it for the final row")
                res = self._evaluate(seq, j, method.model_for(j), device)
                final[j] = res
                for name in columns:
                    acc[name][-1][j] = res[name]["acc"]
                clean_full[-1][j] = res["clean"]["acc_full"]
                last[str(j)] = {name: {k: res[name][k] for k in ("acc", "f1", "n")} for name in columns}
        final_check_seconds = time.time() - check_start
        eval_spent += final_check_seconds
        wall_seconds = time.time() - start
        train_seconds = wall_seconds - eval_spent
        if not self.is_main:
            return {}
        store_path = save_run(self.out / "store.h5", method, seq, cfg)
        if per_task:
            per_task[-1]["store_bytes"] = store_path.stat().st_size
        write_outcomes(self.out / "eval.h5", seq.task_names, final)
        results = {
            "format": "cmat-results", "version": 1, "method": cfg.method, "objective": cfg.objective.name,
            "tasks": cfg.tasks, "task_names": seq.task_names,
            "threat": {"eps": cfg.threat.eps, "alpha": cfg.threat.alpha},
            "attacks": self._attack_params(seq),
            "eval": {"samples": cfg.eval.samples, "n": [final[j]["clean"]["n"] for j in range(len(seq))],
                     "n_test": [final[j]["clean"]["n_full"] for j in range(len(seq))],
                     "robust_counts_clean_correct_only": True},
            "acc": acc,
            "clean_full": {"acc": clean_full, "summary": summarize(clean_full)},
            "f1": {name: [last[str(j)][name]["f1"] for j in range(len(seq))] for name in columns},
            "summary": {name: self._summary(acc[name], [res[name]["correct"] for res in final]) for name in columns},
            "decisions": method.decisions,
            "cost": {"train_seconds": train_seconds, "eval_seconds": eval_spent, "wall_seconds": wall_seconds,
                     "grad_evals": trainer.grad_evals, "per_task": per_task,
                     "final_check_seconds": final_check_seconds, "precision": self.precision,
                     **({"estimate": self.estimate} if getattr(self, "estimate", None) else {}),
                     "params_total": sum(p.numel() for net in method.networks() for p in net.parameters()),
                     "store_bytes": store_path.stat().st_size},
            "seed": cfg.seed,
        }
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=1))
        (self.out / "checkpoint.h5").unlink(missing_ok=True)
        self._figure(logger, acc, seq.task_names)
        return results

    def _evaluate(self, seq, j: int, model, device, progress=None) -> dict:
        """Task j's model under every configured attack (the attacks sized to j's head)."""
        cfg = self.cfg
        task_attacks = build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha, seq[j].num_classes,
                                     alphas=cfg.eval.alphas)
        return evaluate_task(model, seq[j].test, task_attacks, seq[j].num_classes, cfg.seed, j, cfg.eval.samples,
                             cfg.eval.batch_size, device, progress=progress)

    @staticmethod
    def _summary(mat, correct_per_task) -> dict:
        """ACC/BWT/forgetting of the matrix, plus ``n`` and the Wilson 95% interval pooled over
        every evaluated image of every task after the last task."""
        k = int(sum(int(c.sum()) for c in correct_per_task))
        n = int(sum(len(c) for c in correct_per_task))
        return {**summarize(mat), "n": n, "correct": k, "ci95": list(wilson_interval(k, n))}

    def _attack_params(self, seq) -> dict:
        """Every attack's parameters as run (α actually used; for ``aa`` the components per task)."""
        cfg = self.cfg
        out = attack_params(build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha,
                                          max(t.num_classes for t in seq), alphas=cfg.eval.alphas))
        if "aa" in out:
            per_task = [build_attacks(["aa"], cfg.threat.eps, cfg.threat.alpha, seq[j].num_classes)["aa"].components
                        for j in range(len(seq))]
            out["aa"]["components"] = sorted({c for comps in per_task for c in comps},
                                             key=["apgd-ce", "apgd-t", "fab-t", "square"].index)
            out["aa"]["components_per_task"] = per_task
            out["aa"].pop("n_classes", None)
        return out

    def _figure(self, logger, acc, task_names) -> None:
        if not logger.enabled:
            return
        from cmat.plots import accuracy_matrix_figure, plt

        for name, mat in acc.items():
            fig = accuracy_matrix_figure(mat, f"{self.cfg.method} {name}", task_names)
            logger.figure(f"matrix/{name}", fig, len(task_names))
            plt.close(fig)
