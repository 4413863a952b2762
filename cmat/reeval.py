"""Re-evaluating a finished run (``cmat eval``), and the AutoAttack subset check.

A run evaluates every attack but AutoAttack on the whole test set when AutoAttack on every image
does not fit (the MNIST presets); AutoAttack standard then runs afterwards on a declared seeded
subset of ``samples`` images per task, *together with* every other attack, so each column of
that second table is on the same images:

    cmat eval RUN --attacks clean,fgsm,pgd10,pgd40,apgd-ce,aa --samples 1000 --save

``--save`` writes ``RUN/eval-s<samples>.h5`` (per-image outcomes, :mod:`cmat.outcomes`) and
``RUN/eval-s<samples>.json`` (the table); on the images the run itself evaluated (no
``--samples``: the whole test set for the MNIST presets) they are ``RUN/eval-all.*``, and the
bench report adds a re-evaluation section whose ``all`` column is the per-image worst over the
run's attacks and these (:func:`cmat.report.reeval_markdown`). :func:`subset_check` compares the subset's ``worst``
with the run's own whole-set ``worst`` (eval.h5) on the same images: ``added`` counts the images
the run counted robust that the subset's attacks (AutoAttack) break -- how much the whole-set
number overstates robustness.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from cmat.atomic import atomic_write_text
from cmat.errors import CmatError
from cmat.evaluate import WORST, attacks_as_run, check_names, evaluate_task, task_attacks
from cmat.metrics import wilson_interval
from cmat.outcomes import read_outcomes, write_outcomes


def evaluate_run(run_dir, attacks: Optional[list] = None, samples: Optional[int] = None, data_root=None,
                 device="cpu", batch_size: Optional[int] = None, eps: Optional[float] = None) -> dict:
    """``{"run", "samples", "attacks", "tasks": [per task: evaluate_task's result], "task_names"}``
    for the stored run in ``run_dir``: each task's model under ``attacks`` (default: the run's)
    on ``samples`` seeded images per task (default: the run's ``eval.samples``), at radius ``eps``
    (default: the run's threat ε; another ε scales the run's α with it, α' = α·ε'/ε, and the
    crossing rule of :func:`cmat.attacks.sound_alpha` still applies)."""
    from cmat.store import load as load_run
    from cmat.tasks import tasks_for_config

    loaded = load_run(run_dir)
    cfg = loaded.config
    requested = list(attacks) if attacks else list(cfg.eval.attacks)
    check_names(requested)  # names first, before any data is loaded
    eps, alpha = radius(cfg, eps)
    seq = tasks_for_config(cfg, data_root, download=False)
    # every task's attacks sized to its head, before anything is evaluated (apgd-t, aa)
    built = task_attacks(requested, eps, alpha,
                         [seq[j].num_classes for j in range(len(loaded.task_names))], alphas=cfg.eval.alphas,
                         task_names=loaded.task_names)
    samples = samples if samples is not None else cfg.eval.samples
    per_task = [evaluate_task(loaded.model(j).to(device), seq[j].test, atks, seq[j].num_classes, cfg.seed, j,
                              samples, batch_size or cfg.eval.batch_size, device) for j, atks in enumerate(built)]
    return {"run": str(run_dir), "samples": samples, "run_samples": cfg.eval.samples,
            "attacks": attacks_as_run(built), "tasks": per_task,
            "task_names": list(loaded.task_names), "columns": list(built[0]) + [WORST], "seed": cfg.seed,
            "eps": eps, "run_eps": float(cfg.threat.eps)}


def radius(cfg, eps: Optional[float]) -> tuple:
    """(ε, α) of a re-evaluation: the run's threat, or ``eps`` with α scaled by ε/ε_run."""
    run_eps, run_alpha = float(cfg.threat.eps), float(cfg.threat.alpha)
    if eps is None or float(eps) == run_eps:
        return run_eps, run_alpha
    if not 0 < float(eps) <= 1:
        raise CmatError(f"--eps must be in (0, 1] (images are in [0, 1]), got {eps}")
    return float(eps), (run_alpha / run_eps if run_eps > 0 else 0.25) * float(eps)


def summarise(ev: dict) -> dict:
    """The JSON table of :func:`evaluate_run`'s result: per task acc/f1/n per column, the mean
    over tasks and the pooled 95% Wilson interval."""
    per_task = []
    for j, res in enumerate(ev["tasks"]):
        cols = [c for c in res if c in ev["columns"]]
        per_task.append({"task": j, "name": ev["task_names"][j], **{c: {k: res[c][k] for k in ("acc", "f1", "n")}
                                                                   for c in cols}})
    columns = [c for c in per_task[0] if c not in ("task", "name")]
    pooled = {c: (sum(round(r[c]["acc"] * r[c]["n"]) for r in per_task), sum(r[c]["n"] for r in per_task))
              for c in columns}
    return {"run": ev["run"], "seed": ev.get("seed"), "samples": ev["samples"], "eps": ev.get("eps"),
            "attacks": ev["attacks"], "tasks": per_task,
            "mean": {c: sum(r[c]["acc"] for r in per_task) / len(per_task) for c in columns},
            "ci95": {c: list(wilson_interval(*pooled[c])) for c in columns}, "pooled": pooled}


def save_name(samples: Optional[int], run_samples: Optional[int] = None, eps: Optional[float] = None,
              run_eps: Optional[float] = None) -> str:
    """``eval-all`` on the images the run itself evaluated, ``eval-s<N>`` on another seeded subset;
    at another radius than the run's, ``eval-eps<ε>-all`` / ``eval-eps<ε>-s<N>`` (never merged
    into the run's own ``worst``, which is at its threat ε)."""
    images = "all" if samples == run_samples else f"s{samples}"
    if eps is None or run_eps is None or float(eps) == float(run_eps):
        return f"eval-{images}"
    return f"eval-eps{float(eps):.6g}-{images}"


def save(ev: dict, run_dir) -> Path:
    """Write ``eval-s<samples>.h5`` (outcomes) and ``.json`` (table + subset check) into the run."""
    run_dir = Path(run_dir)
    name = save_name(ev["samples"], ev.get("run_samples"), ev.get("eps"), ev.get("run_eps"))
    write_outcomes(run_dir / f"{name}.h5", ev["task_names"], ev["tasks"])
    table = {**summarise(ev), "check": subset_check(run_dir, ev)}
    return atomic_write_text(run_dir / f"{name}.json", json.dumps(table, indent=1))


def subset_check(run_dir, ev: dict) -> Optional[dict]:
    """Per task, on the subset's images: ``run_robust`` (the run's whole-set ``worst`` there),
    ``subset_robust`` (this evaluation's ``worst``) and ``added`` (robust in the run, broken
    here), ``lost`` (the reverse) and ``combined_robust`` (robust to both: the per-image worst over
    every attack either ran). None when the run has no eval.h5, evaluated other images than a
    superset, or this evaluation is at another ε than the run's."""
    if ev.get("eps") is not None and ev.get("run_eps") is not None and ev["eps"] != ev["run_eps"]:
        return None
    try:
        full = read_outcomes(Path(run_dir) / "eval.h5")
    except CmatError:
        return None
    if WORST not in full["correct"]:
        return None
    rows = []
    for j, res in enumerate(ev["tasks"]):
        pos = {int(i): k for k, i in enumerate(full["indices"][j])}
        idx = np.asarray(res["clean"]["indices"])
        if not all(int(i) in pos for i in idx):
            return None
        run_ok = full["correct"][WORST][j][[pos[int(i)] for i in idx]]
        sub_ok = np.asarray(res[WORST]["correct"], dtype=bool)
        rows.append({"task": j, "n": int(len(idx)), "run_robust": int(run_ok.sum()), "subset_robust": int(sub_ok.sum()),
                     "combined_robust": int((run_ok & sub_ok).sum()),
                     "added": int((run_ok & ~sub_ok).sum()), "lost": int((~run_ok & sub_ok).sum())})
    return {"tasks": rows, **{k: sum(r[k] for r in rows) for k in ("n", "run_robust", "subset_robust",
                                                                     "combined_robust", "added", "lost")}}
