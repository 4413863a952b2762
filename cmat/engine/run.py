"""The task-sequence engine: one readable loop over tasks (:class:`Run`).

``Run(cfg, out).execute()``: for each task t — the method's hooks train it (:class:`Trainer`);
then every seen task j ≤ t is evaluated under every configured attack, filling
``acc[attack][t][j]``. After every task a checkpoint is written; at the end ``results.json``
(the contract in DESIGN.md, assembled by :mod:`cmat.engine.results`), ``store.h5``,
``eval.h5`` and ``config.yaml``, each atomically.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from cmat import config as config_mod
from cmat import distributed, estimate
from cmat.atomic import atomic_write_text
from cmat.catalog import check_ddp, method_class
from cmat.engine.results import evaluate_on_test, matrix_figures, results_json
from cmat.engine.state import Evaluations, RunState
from cmat.engine.trainer import Trainer, peak_rss_mb, resolve_device, task_cost
from cmat.errors import CmatError
from cmat.evaluate import model_fingerprint, result_columns, task_attacks
from cmat.objectives import make_objective
from cmat.outcomes import write_outcomes
from cmat.rundir import write_progress
from cmat.seeding import seed_everything
from cmat.store import read_checkpoint, save_checkpoint, save_run
from cmat.tasks import tasks_for_config
from cmat.tblog import RunLogger


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
        self.precision: Optional[dict] = None  # bf16 or float32 training, resolved by execute()
        self.estimate: Optional[dict] = None  # the cost estimate printed before training

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
        # every task's attacks sized to its head, checked before anything is written (apgd-t, aa)
        attacks = task_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha, [t.num_classes for t in seq],
                               alphas=cfg.eval.alphas, task_names=seq.task_names)[-1]
        make_objective(cfg.objective, cfg.threat)  # validate before any output is written
        self._join_torchrun(device)
        if self.dist is not None and device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)
        checkpoint = self.out / "checkpoint.h5"
        state = None
        if self.resume:
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
        self.precision = estimate.resolve_bf16(self.cfg, seq[0], device, masked=method.masked)
        p = self.precision
        if p["mode"] == "auto":
            self.say(f"accel.bf16=auto: a training step under bf16 autocast runs at {p['speedup']:.2f}× "
                     f"float32's speed on {device.type} → training in {'bf16' if p['bf16'] else 'float32'} "
                     f"(bf16 needs ≥ {estimate.AUTO_MIN_SPEEDUP}×); validation and evaluation stay float32")

    def _estimate(self, seq, method, device) -> Optional[dict]:
        """Measure the training pass rate on this device and print what the run will cost."""
        p = self.precision
        if p["mode"] == "auto":  # measured already, both ways
            rate = p["bf16_pass_seconds"] if p["bf16"] else p["fp32_pass_seconds"]
        else:
            rate = estimate.measure_pass_seconds(self.cfg, seq[0], device, masked=method.masked,
                                                 bf16=p["bf16"])
        est = estimate.estimate(self.cfg, seq, method, device, rate)
        for line in estimate.describe(est).splitlines():
            self.say(line)
        return est

    def _join_torchrun(self, device) -> None:
        if distributed.world_size() > 1:
            check_ddp(self.cfg.method, self.cfg.objective.name)
        self.dist = distributed.from_env(device)

    def _loop(self, seq, method, device, attacks, logger, state) -> dict:
        """Train and evaluate every task from the checkpoint on, then write the results."""
        trainer = Trainer(self.cfg, device, logger, self.progress and self.is_main, self.dist)
        trainer.bf16 = self.precision["bf16"]
        trainer.label, trainer.n_tasks = (f"{self.label} " if self.label else ""), len(seq)
        columns = result_columns(attacks)
        rs = self._restore(state, method, trainer, device, len(seq)) if state is not None else RunState.fresh(columns)
        start = time.time() - rs.train_seconds
        evals, final = Evaluations(), []
        for t in range(rs.completed, len(seq)):
            cost = self._train_task(t, seq, method, trainer, start)
            eval_start, eval_cpu = time.time(), time.process_time()
            final = self._evaluate_seen(t, seq, method, device, evals, columns, len(attacks) - 1, logger, trainer)
            rs.eval_seconds += time.time() - eval_start
            cost.update(eval_seconds=time.time() - eval_start, eval_cpu_seconds=time.process_time() - eval_cpu)
            rs.add_row(columns, final)
            logger.event(kind="eval", task=t, acc={n: rs.acc[n][-1] for n in columns})
            self.say("  after task {}: ".format(t + 1)
                     + "  ".join(f"{n}={sum(rs.acc[n][-1]) / len(rs.acc[n][-1]):.3f}" for n in columns))
            cost["peak_rss_mb"] = peak_rss_mb()
            rs.per_task.append(cost)
            if t < len(seq) - 1 and self.is_main:
                self._checkpoint(t, seq, method, rs, trainer, start, cost)
        check_start = time.time()
        self._recheck_frozen(seq, method, device, evals, columns, rs, final)
        final_check_seconds = time.time() - check_start
        rs.eval_seconds += final_check_seconds
        if not self.is_main:
            return {}
        wall_seconds = time.time() - start
        return self._finish(seq, method, columns, rs, final, trainer, logger, {
            "train_seconds": wall_seconds - rs.eval_seconds, "eval_seconds": rs.eval_seconds,
            "wall_seconds": wall_seconds, "final_check_seconds": final_check_seconds, "precision": self.precision})

    def _restore(self, state: dict, method, trainer, device, n_tasks: int) -> RunState:
        """Take a checkpoint's state back into the method, the trainer and torch's generator."""
        method.restore([net.to(device) for net in state["networks"]], state["decisions"])
        rs = RunState.from_checkpoint(state)
        trainer.global_step, trainer.grad_evals = rs.global_step, rs.grad_evals
        torch.set_rng_state(state["rng"])
        self.say(f"resuming after task {rs.completed}/{n_tasks}")
        return rs

    def _train_task(self, t: int, seq, method, trainer, start: float) -> dict:
        """The method's hooks for task t; its cost record (:func:`task_cost`)."""
        task = seq[t]
        if self.is_main:
            est = self.estimate
            write_progress(self.out, t + 1, len(seq), task.name, time.time() - start,
                           est["total_seconds"] if est else None)
        self.say(f"task {t + 1}/{len(seq)}: {task.name} ({task.num_classes} classes, "
                 f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test)")
        before = (time.perf_counter(), trainer.steps, trainer.step_seconds, trainer.val_seconds, trainer.grad_evals,
                  trainer.step_cpu_seconds)
        method.before_task(t, task)
        method.train_task(t, task, trainer)
        method.after_task(t, task)
        return task_cost(trainer, before)

    def _evaluate_seen(self, t: int, seq, method, device, evals: Evaluations, columns, n_attacks: int, logger,
                       trainer) -> list:
        """Every task j ≤ t under every attack (``n_attacks`` besides clean; reusing what
        :class:`Evaluations` allows)."""
        bar = tqdm(total=(t + 1) * n_attacks, desc=f"{trainer.task_label(t)} eval", leave=False,
                   disable=not (self.progress and self.is_main), unit="attack")
        probe, final = evals.probes(), []
        for j in range(t + 1):
            def status(name, j=j):
                bar.set_postfix_str(f"task {j + 1} {seq[j].name}: {name}")
                bar.update(1)

            model = method.model_for(j)
            res, fingerprint = evals.reusable(j, model, t, probe)
            if res is not None:
                bar.update(n_attacks)
            else:
                res = evaluate_on_test(self.cfg, seq, j, model, device, progress=status)
                evals.remember(j, fingerprint, res)
            if fingerprint is not None and method.evaluations_of(j, len(seq)) == 1:  # frozen from now on
                evals.freeze(j, model, seq[j], res, fingerprint, device, t)
            for name in columns:
                logger.scalar(f"eval/{name}/task_{j + 1}_{seq[j].name}", res[name]["acc"], t + 1)
            final.append(res)
        bar.close()
        return final

    def _checkpoint(self, t: int, seq, method, rs: RunState, trainer, start: float, cost: dict) -> None:
        ckpt_start = time.perf_counter()
        rs.completed, rs.train_seconds, rs.precision = t + 1, time.time() - start, self.precision
        rs.global_step, rs.grad_evals = trainer.global_step, trainer.grad_evals
        path = save_checkpoint(self.out / "checkpoint.h5", method, seq, self.cfg, rs.to_checkpoint(),
                               torch.get_rng_state())
        cost["checkpoint_seconds"] = time.perf_counter() - ckpt_start
        cost["store_bytes"] = path.stat().st_size

    def _recheck_frozen(self, seq, method, device, evals: Evaluations, columns, rs: RunState, final: list) -> None:
        """A task declared frozen whose model changed after its evaluation is re-evaluated."""
        for j, check in evals.frozen.items():
            if check.evaluated_after < len(seq) - 1 and model_fingerprint(method.model_for(j)) != check.fingerprint:
                self.say(f"warning: task {j + 1}'s model changed after its evaluation although {self.cfg.method} "
                         "declares it frozen; re-evaluating it for the final row")
                final[j] = evaluate_on_test(self.cfg, seq, j, method.model_for(j), device)
                rs.replace_final(j, columns, final[j])

    def _finish(self, seq, method, columns, rs: RunState, final, trainer, logger, timing: dict) -> dict:
        """store.h5, eval.h5 and results.json; the checkpoint and progress file go."""
        cfg = self.cfg
        store_path = save_run(self.out / "store.h5", method, seq, cfg)
        if rs.per_task:
            rs.per_task[-1]["store_bytes"] = store_path.stat().st_size
        write_outcomes(self.out / "eval.h5", seq.task_names, final)
        results = results_json(cfg, seq, method, columns, rs.acc, rs.clean_full, rs.last, final, trainer,
                               rs.per_task, {**timing, **({"estimate": self.estimate} if self.estimate else {}),
                                             "store_bytes": store_path.stat().st_size})
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=1))
        (self.out / "checkpoint.h5").unlink(missing_ok=True)
        (self.out / "progress.json").unlink(missing_ok=True)  # only a running run has a position
        matrix_figures(logger, cfg.method, rs.acc, seq.task_names)
        return results
