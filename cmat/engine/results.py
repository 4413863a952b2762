"""What a run reports: task j's evaluation on its test set, ``results.json`` (the contract in
DESIGN.md) assembled from the accuracy matrices, and the accuracy-matrix figures."""
from __future__ import annotations

import torch

from cmat.evaluate import attacks_as_run, build_attacks, evaluate_task, task_attacks
from cmat.metrics import summarize, wilson_interval
from cmat.provenance import provenance
from cmat.plots import accuracy_matrix_figure, plt


def evaluate_on_test(cfg, seq, j: int, model, device, progress=None) -> dict:
    """Task j's model under every configured attack (the attacks sized to j's head)."""
    task_attacks = build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha, seq[j].num_classes,
                                 alphas=cfg.eval.alphas)
    return evaluate_task(model, seq[j].test, task_attacks, seq[j].num_classes, cfg.seed, j, cfg.eval.samples,
                         cfg.eval.batch_size, device, progress=progress)


def matrix_summary(mat, correct_per_task) -> dict:
    """ACC/BWT/forgetting of the matrix, plus ``n`` and the Wilson 95% interval pooled over
    every evaluated image of every task after the last task."""
    k = int(sum(int(c.sum()) for c in correct_per_task))
    n = int(sum(len(c) for c in correct_per_task))
    return {**summarize(mat), "n": n, "correct": k, "ci95": list(wilson_interval(k, n))}


def run_attack_params(cfg, seq) -> dict:
    """Every attack's parameters as run (α actually used; for ``aa`` the components per task,
    for ``apgd-t`` the targets per task): :func:`cmat.evaluate.attacks_as_run`."""
    return attacks_as_run(task_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha,
                                       [t.num_classes for t in seq], alphas=cfg.eval.alphas))


def results_json(cfg, seq, method, columns: list, acc: dict, clean_full: list, last: dict, final: list, trainer,
                 per_task: list, times: dict) -> dict:
    """The ``results.json`` object. ``columns``: the result columns (attacks, ``worst``); ``acc``: attack →
    lower-triangular matrix; ``final``: the last row's evaluations per task; ``last``: per task its latest
    ``acc``/``f1``/``n``; ``times``: ``train_seconds``, ``eval_seconds``, ``wall_seconds``, ``final_check_seconds``,
    ``precision``, optionally ``estimate``, and ``store_bytes``."""
    times = dict(times)
    store_bytes = times.pop("store_bytes")
    cost = {"train_seconds": times.pop("train_seconds"), "eval_seconds": times.pop("eval_seconds"),
            "wall_seconds": times.pop("wall_seconds"), "grad_evals": trainer.grad_evals, "per_task": per_task,
            **times,
            "params_total": sum(p.numel() for net in method.networks() for p in net.parameters()),
            "store_bytes": store_bytes}
    return {
        "format": "cmat-results", "version": 1, "method": cfg.method, "objective": cfg.objective.name,
        "tasks": cfg.tasks, "task_names": seq.task_names,
        "threat": {"eps": cfg.threat.eps, "alpha": cfg.threat.alpha},
        "attacks": run_attack_params(cfg, seq),
        "eval": {"samples": cfg.eval.samples, "n": [final[j]["clean"]["n"] for j in range(len(seq))],
                 "n_test": [final[j]["clean"]["n_full"] for j in range(len(seq))],
                 "robust_counts_clean_correct_only": True},
        "acc": acc,
        "clean_full": {"acc": clean_full, "summary": summarize(clean_full)},
        "f1": {name: [last[str(j)][name]["f1"] for j in range(len(seq))] for name in columns},
        "summary": {name: matrix_summary(acc[name], [res[name]["correct"] for res in final]) for name in columns},
        "decisions": method.decisions,
        "cost": cost,
        "seed": cfg.seed,
        "provenance": {**provenance(), "threads": torch.get_num_threads()},  # threads: as trained
    }


def matrix_figures(logger, method_name: str, acc: dict, task_names) -> None:
    """One accuracy-matrix heat map per attack, into TensorBoard (main process only)."""
    if not logger.enabled:
        return
    for name, mat in acc.items():
        fig = accuracy_matrix_figure(mat, f"{method_name} {name}", task_names)
        logger.figure(f"matrix/{name}", fig, len(task_names))
        plt.close(fig)
