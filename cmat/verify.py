"""Per-sample critical ε: the certified lower end and the attack upper end (``cmat verify``).

The critical ε of a correctly classified sample is bracketed by the largest ε a bound certifies
(:mod:`cmat.bounds`; bisection, certified when the lower bound of every margin exceeds the
rounding tolerance of :mod:`cmat.bounds.tolerance`) and the
smallest ε at which a PGD attack finds a counterexample (bisection, batched over samples; for
``milp`` also the solver's own minimisers that the model misclassifies). Results follow
VERONA's CSV columns, with ECDF plots.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Optional

import torch

from cmat.attacks import ascend, eval_mode

from cmat.bounds import BOUNDS, network_ops, proven
from cmat.errors import CmatError
from cmat.plots import ecdf_figure, plt
from cmat.store import load as load_run
from cmat.tasks import tasks_for_config


def pgd_per_sample(model, x, y, eps: torch.Tensor, steps: int = 20, restarts: int = 1, generator=None):
    """PGD with a per-sample ε (α = ε/4), for batched bisection; returns "attack succeeded"."""
    e = eps.view(-1, 1, 1, 1)
    fooled = torch.zeros(len(x), dtype=torch.bool)
    with eval_mode(model), torch.enable_grad():
        for _ in range(restarts):
            noise = torch.rand(x.shape, generator=generator) * 2 - 1
            xa = ascend(model, x, y, (x + noise * e).clamp(0, 1), e, e / 4, steps, "ce")
            with torch.no_grad():
                fooled |= model(xa).argmax(1) != y
    return fooled


def bisect(predicate, n: int, hi: float, iters: int, increasing_true: bool):
    """Per-sample bisection on [0, hi]. ``predicate(eps) -> bool (N,)``. For ``increasing_true``
    (attack success) it returns the smallest ε found true (inf if not true at ``hi``); otherwise
    (certified) the largest ε known true."""
    lo_ = torch.zeros(n)
    hi_ = torch.full((n,), hi)
    if increasing_true:
        ok = predicate(hi_)
        result = torch.where(ok, hi_, torch.full((n,), math.inf))
        for _ in range(iters):
            mid = (lo_ + hi_) / 2
            p = predicate(mid)
            hi_ = torch.where(p, mid, hi_)
            lo_ = torch.where(p, lo_, mid)
        return torch.where(ok, hi_, result)
    ok = predicate(hi_)
    for _ in range(iters):
        mid = (lo_ + hi_) / 2
        p = predicate(mid)
        lo_ = torch.where(p, mid, lo_)
        hi_ = torch.where(p, hi_, mid)
    return torch.where(ok, hi_, lo_)


def milp_counterexamples(model, x, y, points) -> torch.Tensor:
    """Per sample the smallest ε at which an exact MILP minimiser is a real counterexample:
    inside the ball and misclassified by the model itself (a forward pass, not the solver's
    arithmetic); inf where there is none."""
    best = torch.full((len(x),), math.inf)
    with torch.no_grad():
        for n, eps, point in points:
            xa = torch.as_tensor(point, dtype=x.dtype).view_as(x[n]).clamp(0, 1)
            xa = torch.min(torch.max(xa, x[n] - eps), x[n] + eps)
            if eps < best[n] and int(model(xa[None]).argmax(1)) != int(y[n]):
                best[n] = eps
    return best


def critical_eps(model, x, y, eps_max: float, bound: str = "crown", iters: int = 12, attack_steps: int = 20,
                 seed: int = 0, time_limit: Optional[float] = 10.0, max_neurons: Optional[int] = None,
                 node_limit: Optional[int] = None) -> dict:
    """Certified lower end and attack upper end of each sample's critical ε (correct samples);
    for ``milp``, ``unknown`` counts the (sample, ε) checks that ran out of ``time_limit`` (or
    ``node_limit``, the deterministic budget tests use), and
    the upper end also takes the MILP's own minimisers that the model misclassifies."""
    ops = network_ops(model)
    t0 = time.time()
    stats: dict = {}
    with torch.no_grad():
        certified = bisect(lambda e: proven(ops, x, y, e, bound, time_limit, stats, max_neurons, node_limit),
                           len(x), eps_max, iters, False)
    t1 = time.time()
    gen = torch.Generator().manual_seed(seed)
    attack = bisect(lambda e: pgd_per_sample(model, x, y, e, attack_steps, generator=gen), len(x), eps_max, iters, True)
    attack = torch.min(attack, milp_counterexamples(model, x, y, stats.get("points", [])))
    t2 = time.time()
    return {"certified": certified, "attack": attack, "bound_seconds": t1 - t0, "attack_seconds": t2 - t1,
            "unknown": stats.get("unknown", 0)}


COLUMNS = ("network", "image_id", "original_label", "epsilon_value", "smallest_sat_value", "total_time", "verifier")


def task_images(run_dir, task: int, n: int, bound: str, data_root=None) -> tuple:
    """What both verification commands check: ``(config, task's model, its bound ops, the
    first n test images, their labels, indices of the correctly classified ones)``; a bad task
    index, bound or unsupported network is a one-line error before any work."""
    run = load_run(run_dir)
    cfg = run.config
    if not 0 <= task < len(run.task_names):
        raise CmatError(f"task {task} out of range: the run has tasks 0..{len(run.task_names) - 1}")
    if bound not in BOUNDS:
        raise CmatError(f"unknown bound {bound!r} (valid: {', '.join(BOUNDS)})")
    seq = tasks_for_config(cfg, data_root, download=False)
    model = run.model(task)
    ops = network_ops(model)
    x, y = seq[task].test.tensors(torch.arange(min(n, len(seq[task].test))))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return cfg, model, ops, x, y, correct.nonzero().squeeze(1)


def verify_run(run_dir, task: int, n: int, bound: str = "crown", eps_max: Optional[float] = None, out=None,
               data_root=None, iters: int = 12, at_eps: Optional[float] = None, time_limit: float = 10.0,
               max_neurons: Optional[int] = None) -> dict:
    """``cmat verify``: the CSV (VERONA columns), ECDF plots and a summary for one task."""
    cfg, model, _, x, y, ids = task_images(run_dir, task, n, bound, data_root)
    eps_at = float(at_eps if at_eps is not None else cfg.threat.eps)
    eps_max = float(eps_max if eps_max is not None else 4 * eps_at)
    t0 = time.time()
    res = critical_eps(model, x[ids], y[ids], eps_max, bound, iters, seed=cfg.seed, time_limit=time_limit,
                       max_neurons=max_neurons)
    per = (time.time() - t0) / max(len(ids), 1)
    out = Path(out or Path(run_dir) / "verify")
    out.mkdir(parents=True, exist_ok=True)
    name = f"{Path(run_dir).name}/task{task}"
    csv_path = out / f"task{task}_{bound}.csv"
    tmp = csv_path.with_name("." + csv_path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for k, i in enumerate(ids.tolist()):
            w.writerow([name, i, int(y[i]), f"{float(res['certified'][k]):.6g}", f"{float(res['attack'][k]):.6g}",
                        f"{per:.4f}", bound])
    tmp.replace(csv_path)
    cert = res["certified"]
    summary = {"task": task, "bound": bound, "samples": int(len(x)), "correct": int(len(ids)),
               "median_certified_eps": float(cert.median()) if len(cert) else 0.0,
               "median_attack_eps": float(res["attack"].median()) if len(cert) else 0.0,
               "eps": eps_at, "certified_accuracy": float((cert >= eps_at).sum()) / max(len(x), 1),
               "attack_upper_accuracy": float((res["attack"] > eps_at).sum()) / max(len(x), 1),
               "samples_per_second": len(ids) / max(res["bound_seconds"], 1e-9),
               **({"milp_time_limit": time_limit, "milp_unknown_checks": res["unknown"]} if bound == "milp" else {}),
               "csv": str(csv_path)}
    fig = ecdf_figure({f"certified ({bound})": cert.tolist(), "PGD counterexample": res["attack"].tolist()}, eps_at)
    fig.savefig(out / f"task{task}_{bound}_ecdf.png", dpi=110)
    plt.close(fig)
    return summary


def certify_at_eps(run_dir, task: int, n: int, bound: str = "crown", time_limit: float = 10.0,
                   max_neurons: Optional[int] = None, data_root=None) -> dict:
    """``cmat verify --at-eps``: one check per image at the run's ε (no bisection): how many of
    the first ``n`` test images ``bound`` certifies (correct clean and proven for the whole
    ball), the seconds the bound took and, for ``milp``, the checks left unknown by
    ``time_limit`` (counted as not certified)."""
    cfg, _, ops, x, y, ids = task_images(run_dir, task, n, bound, data_root)
    eps = torch.full((len(ids),), float(cfg.threat.eps), dtype=x.dtype)
    stats: dict = {}
    t0 = time.time()
    with torch.no_grad():
        ok = proven(ops, x[ids], y[ids], eps, bound, time_limit, stats, max_neurons)
    seconds = time.time() - t0
    return {"task": task, "bound": bound, "eps": float(cfg.threat.eps), "samples": int(len(x)),
            "correct": int(len(ids)), "certified": int(ok.sum()),
            "certified_accuracy": float(ok.sum()) / max(len(x), 1), "seconds": seconds,
            **({"milp_time_limit": time_limit, "milp_unknown_checks": stats.get("unknown", 0)}
               if bound == "milp" else {})}


def criteria_run(run_dir, n: int, eps: Optional[float] = None, data_root=None) -> dict:
    """``cmat verify --criteria``: on the first ``n`` images of every task that the run evaluated
    (its ``eval.h5``; the first ``n`` test images when it has none), at ``eps`` (default the
    run's ε), how many images each "verified" criterion counts (:mod:`cmat.bounds.criteria`:
    SHIELD's unsound one next to the sound interval and margin tests), how many SHIELD counts
    that CROWN's margin does not prove and, at the run's ε, how many of SHIELD's an attack of
    the run broke (its per-image ``worst``)."""
    from cmat.bounds.criteria import CRITERIA, criteria_counts

    run = load_run(run_dir)
    eps = float(eps if eps is not None else run.config.threat.eps)
    evaluated = _run_worst(run_dir)
    at_run_eps = eps == float(run.config.threat.eps)
    seq = tasks_for_config(run.config, data_root, download=False)
    rows = []
    for j, name in enumerate(run.task_names):
        idx, worst = evaluated[j] if evaluated else (torch.arange(len(seq[j].test)), None)
        idx = torch.as_tensor(idx[:n])
        x, y = seq[j].test.tensors(idx)
        robust = worst[:n] if worst is not None and at_run_eps else None
        rows.append({"task": j, "name": name, **criteria_counts(run.model(j), x, y, eps, robust)})
    keys = ("n", "correct", *CRITERIA, "shield_not_sound")
    if all("shield_broken" in r for r in rows):
        keys += ("shield_broken", "sound_broken")
    return {"run": str(run_dir), "eps": eps, "criteria": list(CRITERIA), "tasks": rows,
            "images": "evaluated by the run" if evaluated else "first test images",
            "total": {k: sum(r[k] for r in rows) for k in keys}}


def _run_worst(run_dir) -> Optional[list]:
    """Per task, ``(test indices, survived every attack)`` of the images the run evaluated (its
    ``eval.h5``); None when it has no readable per-image outcomes with a ``worst`` column."""
    from cmat.outcomes import read_outcomes

    try:
        out = read_outcomes(Path(run_dir) / "eval.h5")
    except CmatError:
        return None
    if "worst" not in out["correct"]:
        return None
    return list(zip(out["indices"], out["correct"]["worst"]))


def criteria_markdown(run_dir) -> str:
    """The ``criteria-*.json`` reports (``cmat verify --criteria --json``) saved in ``run_dir``,
    one row per radius: each criterion's count as accuracy over n, and what SHIELD's overcounts."""
    import json

    reports = sorted((json.loads(p.read_text()) for p in Path(run_dir).glob("criteria-*.json")),
                     key=lambda r: -r["eps"])
    if not reports:
        raise CmatError(f"no criteria-*.json in {run_dir} (cmat verify RUN --criteria --json > RUN/criteria-E.json)")
    cols = ["correct", "shield", "interval", "margin-ibp", "margin-crown"]
    lines = ["| ε | n | " + " | ".join(cols) + " | SHIELD counts, not proven | SHIELD counts, an attack broke |",
             "|" + "---|" * (len(cols) + 4)]
    for r in reports:
        t = r["total"]
        broken = f"{t['shield_broken']} (sound: {t['sound_broken']})" if "shield_broken" in t else "–"
        lines.append(f"| {r['eps']:.4g} | {t['n']} | " + " | ".join(f"{t[c] / t['n']:.4f}" for c in cols)
                     + f" | {t['shield_not_sound']} | {broken} |")
    return "\n".join(lines) + "\n"
