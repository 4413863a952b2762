"""What a run will cost, said before it starts.

The unit is the *pass*: one forward+backward of one image (``Objective.passes`` per training
image and step, attack steps included; ``cost.grad_evals`` counts the same unit). The estimate

- takes each method's planned phases per task (:meth:`cmat.methods.Method.planned_phases`:
  name, epochs, and whether the phase may be skipped or repeated — CMAT's growth steps are an
  upper bound, its compaction levels may stop early — and validations beyond one per epoch,
  such as CMAT's goal checks),
- counts training passes = epochs × training images × objective passes, validation passes per
  epoch (clean forward ≈ ⅓ pass per image, PGD-10 = 11 passes per attacked image) and
  evaluation passes per task (FGSM 2, PGD-k k + 1, APGD 101 per clean-correct image; AutoAttack
  counted as its upper bound, every image surviving every component),
- and turns passes into seconds with a *measured* rate: a few training steps of the configured
  objective on a network of the configured architecture — masked for methods that train masked
  layers (``Method.masked``) — on this device.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch

from cmat.accel import autocast
from cmat.attacks.factory import VAL_CLEAN_PASS, attack_passes
from cmat.config import bf16_mode
from cmat.nn.masked import MaskedMultiHeadNet
from cmat.nn.multihead import MultiHeadNet
from cmat.objectives import make_objective

AUTO_MIN_SPEEDUP = 1.1  # bf16 must be this much faster per training step for ``bf16: auto`` to pick it
REPEATS = 3  # interleaved fp32/bf16 measurements (each the fastest of 3 steps); medians compared


def measure_pass_seconds(cfg, task, device, masked: bool = False, steps: int = 3, bf16: bool = False) -> float:
    """Seconds per training pass of one image: ``steps`` timed training steps (after one warm-up)
    of the configured objective on a throwaway network of the configured architecture — a
    masked one for methods that train masked layers — the random state untouched; the loss
    under bf16 autocast when ``bf16``."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        c, h, _ = task.input_shape
        if masked:
            net = MaskedMultiHeadNet(cfg.model.arch, c, h, cfg.model.width).to(device)
            net.add_task(0, task.num_classes, task.mean, task.std, 1.0)
            net.to(device)
        else:
            net = MultiHeadNet(cfg.model.arch, c, h, [task.num_classes], [task.mean], [task.std],
                               cfg.model.width).to(device)
        model = net.task_view(0).train()
        obj = make_objective(copy.deepcopy(cfg.objective), cfg.threat)
        obj.total_iters = 10 ** 6
        obj.reset()
        # mid-schedule: past a certified objective's natural warm-up, inside its ramp, where the
        # bound passes run (at step 0 a crown-ibp step is a natural one, a third of its cost)
        obj.step = obj.total_iters // 2
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        n = min(cfg.train.batch_size, len(task.train))
        x, y = task.train.tensors(torch.arange(n))
        x, y = x.to(device), y.to(device)
        gen = torch.Generator().manual_seed(0)
        times = []
        for i in range(steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast(cfg.accel, device, enabled=bf16):
                loss, _ = obj.loss(model, x, y, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t0)
    return min(times) / (n * obj.passes)


def resolve_bf16(cfg, task, device: torch.device, masked: bool = False) -> dict:
    """Whether training runs under bf16 autocast (``accel.bf16``, see :mod:`cmat.accel`):
    ``{"bf16": bool, "mode": ...}``; for ``auto`` also the measured seconds per pass in float32
    and bf16 (:func:`measure_pass_seconds`, interleaved, medians of ``REPEATS``) and their ratio
    ``speedup``; bf16 is chosen when ``speedup >= AUTO_MIN_SPEEDUP``."""
    mode = bf16_mode(cfg.accel.bf16)
    if mode != "auto":
        return {"bf16": mode == "on", "mode": mode}
    times = {False: [], True: []}
    for _ in range(REPEATS):  # interleaved, so a load change on a shared machine hits both alike
        for use in (False, True):
            times[use].append(measure_pass_seconds(cfg, task, device, masked=masked, bf16=use))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    speedup = fp32 / bf16
    return {"bf16": speedup >= AUTO_MIN_SPEEDUP, "mode": "auto", "fp32_pass_seconds": fp32,
            "bf16_pass_seconds": bf16, "speedup": speedup}


def estimate(cfg, seq, method, device, pass_seconds: float) -> dict:
    """Per task and phase: epochs, training passes and seconds; validation and evaluation;
    totals (expected, and an upper bound where a method may repeat phases)."""
    obj = make_objective(cfg.objective, cfg.threat)
    tasks, totals = [], {"train_passes": 0, "train_passes_max": 0, "val_passes": 0, "eval_passes": 0}
    for t, task in enumerate(seq):
        n_train, n_val = len(task.train), len(task.val)
        n_val_attack = min(cfg.train.val_attack_samples, n_val)
        per_epoch_val = n_val * VAL_CLEAN_PASS + 11 * n_val_attack
        phases = []
        for ph in method.planned_phases(t, task):
            epochs = max(1, ph["epochs"] // obj.replays) * obj.replays  # as Trainer.fit runs them
            repeat_max = ph.get("max_times", 1)
            expected = ph.get("expected_times", 1)
            train = epochs * n_train * obj.passes
            phases.append({"phase": ph["name"], "epochs": epochs, "times": expected, "max_times": repeat_max,
                           "train_passes": train * expected, "seconds": train * expected * pass_seconds})
            totals["train_passes"] += train * expected
            totals["train_passes_max"] += train * repeat_max
            totals["val_passes"] += per_epoch_val * (epochs + ph.get("extra_validations", 0)) * expected
        n_test = len(task.test) if cfg.eval.samples is None else min(cfg.eval.samples, len(task.test))
        eval_passes = n_test * (VAL_CLEAN_PASS + sum(attack_passes(a, task.num_classes) for a in cfg.eval.attacks
                                                    if a != "worst"))
        totals["eval_passes"] += eval_passes * method.evaluations_of(t, len(seq))
        tasks.append({"task": t, "name": task.name, "phases": phases,
                      "seconds": sum(p["seconds"] for p in phases)})
    sec = {k.replace("passes", "seconds"): v * pass_seconds for k, v in totals.items()}
    return {"pass_seconds": pass_seconds, "device": str(device), "objective_passes": obj.passes,
            "tasks": tasks, **totals, **sec,
            "total_seconds": sec["train_seconds"] + sec["val_seconds"] + sec["eval_seconds"],
            "total_seconds_max": sec["train_seconds_max"] + sec["val_seconds"] + sec["eval_seconds"],
            "note": "pass rate measured on the method's kind of network (masked or plain); checkpoints and "
                    "phase bookkeeping are not counted; evaluation counts AutoAttack at its upper bound"}


def describe(est: dict) -> str:
    """Two lines for the console: totals, and task 1's phases."""
    def fmt(s):
        return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"

    upper = (f" (up to {fmt(est['total_seconds_max'])} if every optional phase runs)"
             if est["total_seconds_max"] > est["total_seconds"] * 1.01 else "")
    first = est["tasks"][0]
    phases = ", ".join(f"{p['phase']} {p['epochs']} ep" + (f" ×{p['times']}" if p["times"] != 1 else "")
                       + (f" (≤×{p['max_times']})" if p["max_times"] != p["times"] else "")
                       for p in first["phases"])
    return (f"estimate on {est['device']}: ≈ {fmt(est['total_seconds'])} in all{upper} — training "
            f"{fmt(est['train_seconds'])}, validation {fmt(est['val_seconds'])}, "
            f"evaluation ≤ {fmt(est['eval_seconds'])}; "
            f"measured {est['pass_seconds'] * 1e3:.3g} ms per training pass\n"
            f"  per task ≈ {fmt(first['seconds'])} of training (task 1: {phases})")
