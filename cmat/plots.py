"""Matplotlib figures (Agg backend, no screen needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def accuracy_matrix_figure(acc, title: str = ""):
    """Heat map of the lower-triangular matrix ``acc[i][j]`` (row: after task i; column: task j)."""
    t = len(acc)
    mat = np.full((t, t), np.nan)
    for i, row in enumerate(acc):
        mat[i, : len(row)] = row
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * t, 0.8 + 0.5 * t))
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    if t <= 10:
        for i in range(t):
            for j in range(i + 1):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def task_bars_figure(results_by_method: dict, attacks=("clean", "pgd10", "pgd40")):
    """Per-task grouped bars (after the last task) of each attack, one panel per method."""
    n = len(results_by_method)
    fig, axes = plt.subplots(n, 1, figsize=(max(6, 0.6 * _n_tasks(results_by_method) + 2), 2.6 * n), squeeze=False)
    for ax, (method, res) in zip(axes[:, 0], results_by_method.items()):
        names = [a for a in attacks if a in res["acc"]]
        t = len(res["task_names"])
        width = 0.8 / max(len(names), 1)
        for k, a in enumerate(names):
            ax.bar(np.arange(t) + k * width, res["acc"][a][-1], width, label=a)
        ax.set_xticks(np.arange(t) + 0.4 - width / 2)
        ax.set_xticklabels(res["task_names"], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(method)
        ax.legend(fontsize=7, ncol=len(names))
    fig.tight_layout()
    return fig


def _n_tasks(results_by_method: dict) -> int:
    return max(len(r["task_names"]) for r in results_by_method.values())


def curves_figure(rows_by_method: dict, x: str, title: str):
    """Accuracy against ``x`` (``eps`` or ``steps``), one line per method."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, rows in rows_by_method.items():
        ax.plot([r[x] for r in rows], [r["acc"] for r in rows], marker="o", label=method)
    ax.set_xlabel("ε" if x == "eps" else "PGD steps")
    ax.set_ylabel("accuracy (mean over tasks)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ecdf_figure(values_by_name: dict, eps: float):
    """Empirical CDFs of per-sample critical-ε bounds, with the threat ε marked."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, vals in values_by_name.items():
        v = np.sort(np.asarray([x for x in vals if np.isfinite(x)]))
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(vals), where="post", label=name)
    ax.axvline(eps, color="k", ls="--", lw=0.8, label=f"ε = {eps:.4g}")
    ax.set_xlabel("critical ε")
    ax.set_ylabel("fraction of samples")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
