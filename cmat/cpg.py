"""CMAT: CPG's compact–pick–grow (Hung et al. 2019) with adversarial training.

For each task t, on one masked network (:mod:`cmat.nn.masked`):

1. **pick + train** — the free weights become t's; t's weights train with SGD (lr, momentum,
   Nesterov; weight decay on owned weights only) and, from the second task on, a piggyback
   mask over the earlier tasks' weights trains with Adam (``mask_lr``, 5e-4), both under the
   run's objective (``pgd`` by default; ``standard`` gives plain CPG).
2. **grow** — while the validation metric misses the goal (minus ``tolerance``) by more than
   the validation images can resolve (below) and the width multiplier is below ``max_width``
   (1.5), the width multiplier grows by ``width_step`` (0.5);
   every masked layer's channels grow by √multiplier (so the parameter count grows about by
   the multiplier), the new entries are t's, earlier tasks keep their slice; retrain.
3. **compact** — (towards the goal, or towards the metric reached if the goal is still missed
   after growth, so a task never keeps capacity that does not help it) gradual magnitude pruning of
   t's weights per layer on the Zhu–Gupta cubic
   schedule s_k = s_f·(1 − (1 − k/K)³), k = 1..K (``max_sparsity`` s_f = 0.9,
   ``prune_levels`` K = 5), retraining ``compact_epochs`` under the objective after each step;
   the largest sparsity whose validation metric still meets the goal is kept (one ramp with a
   snapshot per level instead of CPG's separate run per level: it chooses the same way as long
   as the metric falls with sparsity, and costs one ramp); the pruned weights are released.

An individual goal no better than chance (1/C + one validation image) is unreliable: the run
warns, records ``goal_reliable: false`` and trains the task to its best effort (growth to the
width cap, then compaction keeping what was reached) instead of compacting towards chance.

The goal test is ``metric ≥ goal − tol`` with ``tol = max(tolerance, tolerance_samples / n)``
(n validation images behind the metric), so a tolerance never falls below one image.

Growth needs more than a missed goal: the individual goal model and t's model are validated on
the same images (the same seeded attack), and the task grows only if, in addition, the goal model
keeps significantly more of them — a one-sided exact McNemar test on the images one model keeps
and the other loses, p < ``grow_alpha`` (0.05). With 58 validation images a shortfall of three
images (0.05) is p ≥ 0.125: noise that another machine's float rounding can flip, and growth
flips every later task with it. ``grow_alpha: 1`` gives CPG's rule (grow on any missed goal);
a numeric goal has no goal model and uses the goal test alone. The p-values go to ``decisions``.

Goal (``goal``): ``individual`` — the validation metric of an individually trained model of
the same objective on task t (trained here, or read from ``individual_run``, an at-individual
run directory); a number; or ``none`` (no growth, compaction to ``max_sparsity``). The metric
follows the objective: robust validation accuracy (PGD-10) for adversarial objectives, clean
for ``standard``. Every decision goes to ``results.json``/the store (``decisions``) and
TensorBoard.

Goal provenance: goals read from ``individual_run`` are recorded as ``decisions.goal_source``
(that run's directory and the SHA-256 of its ``results.json``, :func:`goal_source`). A CMAT run
is current only while its goal source is (:func:`goals_current`): the bench reuses a finished
CMAT run only then, and resuming a checkpoint whose goals came from another at-individual run
(rerun since) is refused, so the bench's launcher restarts it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from cmat.errors import CmatError
from cmat.methods import MaskedMethod, Option, register
from cmat.metrics import mcnemar_exact
from cmat.store import load as load_run


def goal_source(individual_run) -> dict:
    """Where goals read from the at-individual run ``individual_run`` come from: its directory
    (as configured) and the SHA-256 of its ``results.json``, which a rerun of it rewrites."""
    results = Path(individual_run) / "results.json"
    try:
        digest = hashlib.sha256(results.read_bytes()).hexdigest()
    except OSError:
        raise CmatError(f"individual_run {individual_run} holds no results.json: "
                        "not a finished at-individual run") from None
    return {"run": str(individual_run), "results_sha256": digest}


def goals_current(run_dir, individual_run) -> bool:
    """Whether the finished CMAT run in ``run_dir`` read its goals from ``individual_run`` as that
    run is now: its recorded ``decisions.goal_source`` equals :func:`goal_source` of it. False
    when either results file is missing or unreadable, or the run recorded no source."""
    try:
        recorded = json.loads((Path(run_dir) / "results.json").read_text())["decisions"].get("goal_source")
        return recorded is not None and recorded == goal_source(individual_run)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CmatError):
        return False


@register
class CMAT(MaskedMethod):
    """CPG compact-pick-grow (Hung et al. 2019) with the run's objective: prune, pick earlier weights, grow if needed.
    """
    name = "cmat"
    supports_ddp = True
    options = {
        "goal": Option("individual", "per-task goal: an individual model's validation metric, a number, or none "
                       "(no growth, compaction to max_sparsity)", 0.0, 2.0, words=("individual", "none")),
        "tolerance": Option(0.02, "the goal test's slack: metric ≥ goal − max(tolerance, tolerance_samples/n)",
                            0.0, 1.0),
        "tolerance_samples": Option(1, "the slack in validation images", 0.0, 1e6),
        "grow_alpha": Option(0.05, "McNemar p below which a missed goal grows the network (1: any miss)", 0.0, 1.0),
        "max_width": Option(1.5, "width multiplier cap for growth", 1.0, 16.0),
        "width_step": Option(0.5, "width multiplier added per growth step", 1e-3, 16.0),
        "max_sparsity": Option(0.9, "final sparsity s_f of the cubic pruning ramp", 0.0, 0.999),
        "prune_levels": Option(5, "pruning levels K of the ramp", 1, 1000, integer=True),
        "compact_epochs": Option(None, "retraining epochs per pruning level (None: train.epochs // 5)",
                                 1, 10 ** 6, integer=True),
        "mask_lr": Option(5e-4, "Adam lr of the piggyback mask over earlier tasks' weights", 1e-12, 10.0),
        "compact_last": Option(True, "compact the last task too", kind="bool"),
        "individual_run": Option(None, "an at-individual run directory to read the goals from", kind="path"),
    }

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.width = 1.0
        self.decisions = {"tasks": []}
        self._individual = None

    # ----- hooks -----------------------------------------------------------------------
    def before_task(self, t, task):
        self.net.add_task(t, task.num_classes, task.mean, task.std, math.sqrt(self.width))
        if t > 0:
            for m in self.net.masked_layers():
                m.start_piggyback(self.layer(t))

    def train_task(self, t, task, trainer):
        opts = self.opts
        goal, goal_correct = self._goal(t, task, trainer)
        tol = self._tolerance(task, trainer)
        reliable = self._goal_reliable(goal, task, trainer)
        if not reliable:
            trainer.logger.event(kind="warning", task=t, message="goal at chance")
            tqdm.write(f"[{trainer.label.strip() or 'cmat'}] warning: task {t + 1} ({task.name}): "
                       f"the individual goal model reached {goal:.3f}, "
                       f"no better than chance ({1 / task.num_classes:.3f}) + one validation image; "
                       "training this task to its best effort (growing to the width cap) instead")
        self._fit(t, task, trainer, None, "train")
        metric, correct = self._validation(t, task, trainer)
        trained = metric
        target = goal if reliable else float("inf")  # best effort: grow until the cap
        tests = []
        while self.width + opts["width_step"] <= opts["max_width"] + 1e-9 and \
                self._should_grow(target, goal_correct, metric, correct, tol, tests):
            self.width += float(opts["width_step"])
            self.net.add_task(t, task.num_classes, task.mean, task.std, math.sqrt(self.width))
            trainer.logger.scalar(f"task_{t + 1}/width", self.width, t + 1)
            self._fit(t, task, trainer, None, f"grow{self.width:g}")
            metric, correct = self._validation(t, task, trainer)
        grown = metric
        # a goal still missed at the width cap is replaced by what was reached: compaction then
        # keeps that (within the tolerance) and still releases what does not contribute --
        # otherwise the task would keep every weight and leave later tasks no free capacity
        compact_goal = grown if target is not None and grown < target - tol else goal
        sparsity = 0.0
        if opts["compact_last"] or t < len(self.seq) - 1:
            sparsity, metric = self._compact(t, task, trainer, compact_goal, tol, metric)
        picked = self._picked_fraction(t)
        for m in self.net.masked_layers():
            if str(self.layer(t)) in m.piggy:
                m.finish_piggyback(self.layer(t))
        record = {"task": t, "goal": goal, "goal_reliable": reliable, "compact_goal": compact_goal,
                  "val_after_train": trained, "val_after_grow": grown, "width": self.width, "sparsity": sparsity,
                  "val_final": metric, "picked_fraction": picked, "growth_tests": tests}
        self.decisions["tasks"].append(record)
        for key in ("sparsity", "width", "val_final"):
            trainer.logger.scalar(f"cmat/{key}", record[key], t + 1)
        if picked is not None:
            trainer.logger.scalar("cmat/picked_fraction", picked, t + 1)
        if goal is not None:
            trainer.logger.scalar("cmat/goal", goal, t + 1)

    def restore(self, networks, decisions):
        source = self.opts["individual_run"]
        if source and decisions.get("goal_source") != goal_source(source):
            raise CmatError(f"the checkpoint's goals came from {decisions.get('goal_source')}, not from {source} as it "
                            "is now (rerun since?): this CMAT run starts again")
        super().restore(networks, decisions)
        if decisions["tasks"]:
            self.width = float(decisions["tasks"][-1]["width"])

    # ----- pieces --------------------------------------------------------------------------
    def planned_phases(self, t, task):
        o, epochs = self.opts, self.cfg.train.epochs
        phases = []
        if o["goal"] == "individual" and not o["individual_run"]:
            phases.append({"name": "individual", "epochs": epochs})
        # extra_validations: the goal checks after a phase (_metric), beside the per-epoch ones
        goal_checks = 1 if o["goal"] == "individual" else 0
        phases.append({"name": "train", "epochs": epochs, "extra_validations": 1 + goal_checks})
        grow_steps = int((float(o["max_width"]) - 1.0) / float(o["width_step"]) + 1e-9)
        if grow_steps:
            phases.append({"name": "grow", "epochs": epochs, "expected_times": 0, "max_times": grow_steps,
                           "extra_validations": 1})
        if o["compact_last"] or t < len(self.seq) - 1:
            levels = int(o["prune_levels"])
            phases.append({"name": "compact", "epochs": o["compact_epochs"] or max(1, epochs // 5),
                           "expected_times": levels, "max_times": levels, "extra_validations": 1})
        return phases

    def evaluations_of(self, j, n_tasks):
        return 1  # masks freeze task j's function: one evaluation, reused

    def _fit(self, t, task, trainer, epochs, tag):
        wd = self.cfg.train.weight_decay
        groups = self.net.param_groups(t, wd)
        masks = [m.piggy[str(self.layer(t))] for m in self.net.masked_layers() if str(self.layer(t)) in m.piggy]
        extra = [torch.optim.Adam(masks, lr=float(self.opts["mask_lr"]), fused=True)] if masks else []
        trainer.fit(self.net.task_view(t), None, task, t, snapshot=self.net, epochs=epochs, param_groups=groups,
                    after_backward=lambda: self.net.owned_weight_decay(t, wd), extra_optimizers=extra, tag=tag,
                    warm=tag != "train")

    def _metric(self, t, task, trainer, model=None) -> float:
        return self._validation(t, task, trainer, model)[0]

    def _validation(self, t, task, trainer, model=None):
        """(validation metric, its per-image outcomes): robust for adversarial objectives."""
        val = trainer.validate(model if model is not None else self.net.task_view(t), task, t)
        kind = "robust" if trainer.objective.adversarial else "clean"
        return val[kind], val[f"{kind}_correct"]

    def _should_grow(self, target, goal_correct, metric, correct, tol, tests) -> bool:
        """Grow when the goal is missed (``metric < target − tol``) and, with a goal model, that
        model keeps significantly more of the same validation images (one-sided exact McNemar,
        p < ``grow_alpha``); each test is appended to ``tests``."""
        if target is None or not metric < target - tol:
            return False
        if goal_correct is None or math.isinf(target):
            return True
        test = mcnemar_exact(goal_correct.numpy(), correct.numpy(), alternative="greater")
        grow = test["p"] < float(self.opts["grow_alpha"]) or float(self.opts["grow_alpha"]) >= 1.0
        tests.append({"metric": metric, "goal_only": test["a_only"], "model_only": test["b_only"],
                      "p": test["p"], "grow": grow})
        return grow

    def _tolerance(self, task, trainer) -> float:
        """``max(tolerance, tolerance_samples / n)``, n = the validation images behind the metric:
        on a small validation set a tolerance below one image would make the goal test noise."""
        n = len(task.val)
        if trainer.objective.adversarial:
            n = min(n, self.cfg.train.val_attack_samples)
        return max(float(self.opts["tolerance"]), float(self.opts["tolerance_samples"]) / max(n, 1))

    def _goal_reliable(self, goal, task, trainer) -> bool:
        """False when an individual-model goal is no better than chance plus one validation
        image (1/C + 1/n): compacting towards it would release the capacity a learnable task
        needs. Numeric goals and ``none`` are the user's choice and always count as reliable."""
        if goal is None or self.opts["goal"] != "individual":
            return True
        n = len(task.val)
        if trainer.objective.adversarial:
            n = min(n, self.cfg.train.val_attack_samples)
        return goal > 1.0 / task.num_classes + 1.0 / max(n, 1) + 1e-12

    def _goal(self, t, task, trainer):
        goal = self.opts["goal"]
        if goal == "none":
            return None, None
        if isinstance(goal, (int, float)):
            return float(goal), None
        if self.opts["individual_run"]:
            if self._individual is None:
                self.decisions["goal_source"] = goal_source(self.opts["individual_run"])
                self._individual = load_run(self.opts["individual_run"])
            if t >= len(self._individual.task_names):
                raise CmatError(f"individual_run {self.opts['individual_run']} has no task {t}")
            return self._validation(t, task, trainer, self._individual.model(t).to(self.device))
        state = torch.get_rng_state()
        net = self.new_network([t])
        trainer.fit(net.task_view(0), list(net.parameters()), task, t, snapshot=net, tag="individual")
        torch.set_rng_state(state)  # the goal model must not change the run's random stream
        return self._validation(t, task, trainer, net.task_view(0))

    def _compact(self, t, task, trainer, goal, tol, metric):
        opts = self.opts
        layers = self.net.masked_layers()
        initial = [int((m.owner == self.layer(t)).sum()) for m in layers]
        epochs = opts["compact_epochs"] or max(1, self.cfg.train.epochs // 5)
        best = (0.0, metric, self._capture())
        levels = int(opts["prune_levels"])
        for k in range(1, levels + 1):
            s = float(opts["max_sparsity"]) * (1 - (1 - k / levels) ** 3)
            self.net.prune_to(t, s, initial)
            self._fit(t, task, trainer, epochs, f"compact{k}")
            m = self._metric(t, task, trainer)
            trainer.logger.scalar(f"task_{t + 1}/compact_val", m, k)
            if goal is not None and m < goal - tol:
                break
            best = (s, m, self._capture())
        self._restore(best[2])
        return best[0], best[1]

    def _capture(self):
        return (copy.deepcopy(self.net.state_dict()), [m.owner.clone() for m in self.net.masked_layers()])

    def _restore(self, snap):
        state, owners = snap
        self.net.load_state_dict(state)
        for m, o in zip(self.net.masked_layers(), owners):
            m.owner.copy_(o)
            m.invalidate()

    def _picked_fraction(self, t):
        """Fraction of the earlier tasks' weights (in t's slice) that t's mask selects."""
        if t == 0:
            return None
        sel, total = 0, 0
        for m in self.net.masked_layers():
            sel += int(m.picked(self.layer(t)).sum())
            total += int(m.region_masks(self.layer(t))[1].sum())
        return sel / max(total, 1)
