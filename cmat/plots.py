"""Matplotlib figures (Agg backend, no screen needed).

Contract: every ``*_figure`` function returns a new ``Figure`` (the caller saves and closes it)
laid out with matplotlib's constrained layout, so tick labels, colourbars and legends fit
inside the canvas without ``bbox_inches="tight"``. Legends sit outside the axes and never
cover data. Colours are colour-blind friendly (Okabe–Ito); a given attack name always gets
the same colour. Accuracy heat maps use ``viridis`` on a fixed 0..1 scale, label their axes
with task names and write each cell's value in black or white, whichever reads on that cell.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cmat.attacks.factory import form_colour  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
WORST_COLOUR = "#000000"  # the per-image worst case; each attack form declares its own (cmat.attacks.factory)
BAR_ATTACKS = ("clean", "fgsm", "pgd10", "pgd40", "aa", "worst", "certified")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MATRIX_CMAP = "viridis"


# ----------------------------------------------------------------------------- heat maps

def text_colour(value: float, cmap=MATRIX_CMAP) -> str:
    """``"black"`` or ``"white"``: black when the cell colour of ``value`` (on the 0..1 scale of
    ``cmap``) has luminance > 0.5 (Rec. 709 weights of the sRGB channels), white otherwise."""
    r, g, b, _ = plt.get_cmap(cmap)(float(np.clip(value, 0.0, 1.0)))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def _matrix(acc) -> np.ndarray:
    t = len(acc)
    mat = np.full((t, t), np.nan)
    for i, row in enumerate(acc):
        mat[i, : len(row)] = row
    return mat


def draw_accuracy_matrix(ax, acc, task_names=None, title: str = "", ylabels: bool = True):
    """Draw the lower-triangular ``acc[i][j]`` (row i: after training task i; column j: the
    evaluated task) on ``ax``; untrained cells stay light grey. Returns the ``AxesImage``."""
    mat = _matrix(acc)
    t = len(mat)
    names = list(task_names) if task_names is not None and len(task_names) >= t else [str(j) for j in range(t)]
    cmap = plt.get_cmap(MATRIX_CMAP).with_extremes(bad="#eeeeee")
    im = ax.imshow(mat, vmin=0, vmax=1, cmap=cmap)
    if t <= 12:
        size = 9 if t <= 6 else 7
        for i in range(t):
            for j in range(t):
                if np.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=size,
                            color=text_colour(mat[i, j]))
    ax.set_xticks(np.arange(t))
    ax.set_xticklabels(names[:t], rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(np.arange(t))
    ax.set_yticklabels(names[:t] if ylabels else [], fontsize=8)
    ax.set_xlabel("evaluated task")
    if ylabels:
        ax.set_ylabel("after training task")
    ax.set_title(title, fontsize=10)
    return im


def accuracy_matrix_figure(acc, title: str = "", task_names=None):
    """Heat map of one accuracy matrix ``acc[i][j]`` with a 0..1 colourbar; ticks are the task
    names when given (else task indices)."""
    t = len(acc)
    fig, ax = plt.subplots(figsize=(2.6 + 0.55 * t, 2.2 + 0.5 * t), layout="constrained")
    im = draw_accuracy_matrix(ax, acc, task_names, title)
    fig.colorbar(im, ax=ax, label="accuracy", shrink=0.9)
    return fig


def accuracy_grid_figure(panels: dict, attack: str, max_cols: int = 4):
    """One figure per attack: a heat map per method (``panels``: method → ``(acc, task_names)``)
    on a shared 0..1 scale with one colourbar; task names label the first column's rows."""
    n = max(len(panels), 1)
    cols = min(n, max_cols)
    rows = -(-n // cols)
    t = max((len(acc) for acc, _ in panels.values()), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.2, 2.0 + (0.8 + 0.5 * t) * cols), 0.6 + (1.6 + 0.5 * t) * rows),
                             squeeze=False, layout="constrained")
    im = None
    for k, (method, (acc, names)) in enumerate(panels.items()):
        im = draw_accuracy_matrix(axes.flat[k], acc, names, method, ylabels=(k % cols == 0))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if im is not None:
        fig.colorbar(im, ax=axes, label="accuracy", shrink=0.9)
    fig.suptitle(accuracy_title(attack), fontsize=11)
    return fig


def accuracy_title(attack: str) -> str:
    """``accuracy under pgd10``; ``worst`` reads as the per-image worst case over the attacks."""
    return "accuracy, per-image worst case over the attacks" if attack == "worst" else f"accuracy under {attack}"


# ----------------------------------------------------------------------------- bars and curves

def attack_colour(name: str, k: int = 0) -> str:
    own = WORST_COLOUR if name == "worst" else form_colour(name)
    return own or OKABE_ITO[k % len(OKABE_ITO)]


def task_bars_figure(results_by_method: dict, attacks=BAR_ATTACKS):
    """Per-task grouped bars of accuracy after the last task, one panel per method, one bar per
    attack of ``attacks`` that the method's ``acc`` has (in that order). One shared legend sits
    above the panels, outside every axes."""
    n = len(results_by_method)
    present = [a for a in attacks if any(a in r["acc"] for r in results_by_method.values())]
    t_max = _n_tasks(results_by_method)
    fig, axes = plt.subplots(n, 1, figsize=(max(6.0, 0.25 * len(present) * t_max + 2.5), 0.6 + 2.6 * n),
                             squeeze=False, layout="constrained")
    for ax, (method, res) in zip(axes[:, 0], results_by_method.items()):
        names = [a for a in present if a in res["acc"]]
        t = len(res["task_names"])
        width = 0.8 / max(len(names), 1)
        for k, a in enumerate(names):
            ax.bar(np.arange(t) + (k - (len(names) - 1) / 2) * width, res["acc"][a][-1][:t], width,
                   label=a, color=attack_colour(a, present.index(a)), edgecolor="white", linewidth=0.5)
        ax.set_xticks(np.arange(t))
        tilt = t > 8 or max(len(s) for s in res["task_names"]) * t > 60
        ax.set_xticklabels(res["task_names"], rotation=45 if tilt else 0, ha="right" if tilt else "center",
                           rotation_mode="anchor", fontsize=8)
        ax.set_xlim(-0.6, t - 0.4)
        ax.set_ylim(0, 1)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylabel("accuracy")
        ax.set_title(method, fontsize=10)
    handles = [matplotlib.patches.Patch(color=attack_colour(a, k), label=a) for k, a in enumerate(present)]
    fig.legend(handles=handles, loc="outside upper center", ncol=max(len(handles), 1), fontsize=8,
               title="per-task accuracy after the last task, by attack", title_fontsize=9, frameon=False)
    return fig


def _n_tasks(results_by_method: dict) -> int:
    return max(len(r["task_names"]) for r in results_by_method.values())


def curves_figure(rows_by_method: dict, x: str, title: str, eps=None):
    """Mean accuracy against ``x`` (``"eps"`` or ``"steps"``), one line per method, legend to
    the right of the axes. For ``"eps"`` a top axis reads ε in 1/255 units and ``eps`` (the
    preset ε), when given, is marked; steps are on a log axis ticked at the measured values."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for k, (method, rows) in enumerate(rows_by_method.items()):
        ax.plot([r[x] for r in rows], [r["acc"] for r in rows], marker=MARKERS[k % len(MARKERS)],
                color=OKABE_ITO[k % len(OKABE_ITO)], label=method)
    if x == "eps":
        ax.set_xlabel("ε (pixel scale, [0,1] images)")
        top = ax.secondary_xaxis("top", functions=(lambda v: v * 255, lambda v: v / 255))
        top.set_xlabel("ε × 255", fontsize=8)
        if eps is not None:
            ax.axvline(eps, color="0.4", ls="--", lw=0.8, label=f"preset ε = {eps_text(eps)}")
    else:
        ax.set_xscale("log")
        ticks = sorted({r[x] for rows in rows_by_method.values() for r in rows})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(v) for v in ticks])
        ax.minorticks_off()
        ax.set_xlabel("PGD steps")
    ax.set_ylabel("accuracy (mean over tasks)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def eps_text(eps: float) -> str:
    """``ε`` as ``0.03137 (8/255)``."""
    return f"{eps:.4g} ({eps * 255:.3g}/255)"


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


# ----------------------------------------------------------------------------- transfer study

STRATEGY_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")
# keyed by role: "standard", "robust" (the study's robust objective: pgd, crown-ibp, ...), "none"
SOURCE_MARKERS = {"standard": "o", "robust": "s", "none": "D"}
VARIANT_COLOURS = {("standard", "standard"): "#56B4E9", ("standard", "robust"): "#0072B2",
                   ("robust", "standard"): "#E69F00", ("robust", "robust"): "#D55E00",
                   ("none", "standard"): "#999999", ("none", "robust"): "#000000"}


def _role(study: dict, objective: str) -> str:
    return objective if objective in ("standard", "none") else "robust"


def _variant(study: dict, row: dict) -> tuple:
    return _role(study, row["source_objective"]), _role(study, row["target_objective"])


def _variant_label(study: dict, source: str, target: str) -> str:
    name = {"robust": study.get("robust_objective", "pgd"), "standard": "standard", "none": "none"}
    if source == "none":
        return f"scratch, {name[target]} objective"
    return f"{name[source]} source → {name[target]} objective"


def _strategies(study: dict) -> list:
    return list(study["strategies"]) + ["scratch"]


def pareto_front(points) -> list:
    """Indices of the points ``(cost, value)`` that no other point beats (cost ≤ and value ≥,
    one of them strictly), in increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def transfer_pareto_figure(study: dict):
    """Robust accuracy (the study's robust column) against target cost (passes, log scale): one
    marker per cell — colour = strategy, shape = source objective, filled = robust target objective
    — and the Pareto front as a dashed step line."""
    robust = study["robust_column"]
    robust_name = study.get("robust_objective", "pgd")
    rows = study["rows"]
    strategies = _strategies(study)
    fig, ax = plt.subplots(figsize=(7.6, 4.4), layout="constrained")
    pts = [(max(r["grad_evals"], 1), r[robust]) for r in rows]
    front = pareto_front(pts)
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    fx.append(max(p[0] for p in pts) * 1.15)  # the best value holds for any larger budget
    fy.append(fy[-1])
    ax.step(fx, fy, where="post", color="0.5", ls="--", lw=1, zorder=1)
    for r, (x, y) in zip(rows, pts):
        colour = STRATEGY_COLOURS[strategies.index(r["strategy"]) % len(STRATEGY_COLOURS)]
        filled = _role(study, r["target_objective"]) == "robust"
        ax.scatter(x, y, s=60, marker=SOURCE_MARKERS[_role(study, r["source_objective"])], zorder=2,
                   facecolor=colour if filled else "white", edgecolor=colour, linewidth=1.6)
    ax.set_xscale("log")
    ax.set_xlabel("target training cost: forward+backward passes (log scale)")
    ax.set_ylabel(f"robust accuracy ({robust})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="s", markersize=8, color=STRATEGY_COLOURS[k], label=s)
               for k, s in enumerate(strategies)]
    handles += [matplotlib.lines.Line2D([], [], ls="", marker=m, markersize=7, markerfacecolor="white",
                                        markeredgecolor="0.2",
                                        label=("scratch" if s == "none"
                                               else f"{robust_name if s == 'robust' else s} source"))
                for s, m in SOURCE_MARKERS.items()]
    handles += [matplotlib.lines.Line2D([], [], ls="", marker="o", markersize=7, color="0.2",
                                        label=f"{robust_name} target (filled)"),
                matplotlib.lines.Line2D([], [], ls="", marker="o", markersize=7, markerfacecolor="white",
                                        markeredgecolor="0.2", label="standard target (open)"),
                matplotlib.lines.Line2D([], [], color="0.5", ls="--", label="Pareto front")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.set_title(f"{study['tasks']}: robustness against cost of each transfer cell", fontsize=10)
    return fig


def transfer_bars_figure(study: dict):
    """Grouped bars per strategy (one bar per source × target objective), one panel per
    accuracy column (clean, the robust column, certified)."""
    robust = study["robust_column"]
    attacked = "worst" if robust == "certified" else robust  # a certified study: attacks, then proofs
    columns = [c for c in dict.fromkeys(("clean", attacked, "certified")) if c in study["rows"][0]]
    strategies = _strategies(study)
    variants = [v for v in VARIANT_COLOURS if any(_variant(study, r) == v for r in study["rows"])]
    fig, axes = plt.subplots(len(columns), 1, figsize=(max(6.5, 1.3 * len(strategies) + 2), 0.8 + 2.3 * len(columns)),
                             squeeze=False, layout="constrained")
    for ax, col in zip(axes[:, 0], columns):
        for s_i, strat in enumerate(strategies):
            present = [v for v in variants if any(r["strategy"] == strat and _variant(study, r) == v
                                                  for r in study["rows"])]
            width = 0.8 / max(len(present), 1)
            for k, v in enumerate(present):
                r = next(r for r in study["rows"] if r["strategy"] == strat and _variant(study, r) == v)
                ax.bar(s_i + (k - (len(present) - 1) / 2) * width, r[col], width, color=VARIANT_COLOURS[v],
                       edgecolor="white", linewidth=0.5)
        ax.set_xticks(np.arange(len(strategies)))
        ax.set_xticklabels(strategies)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylabel(col)
    handles = [matplotlib.patches.Patch(color=VARIANT_COLOURS[v], label=_variant_label(study, *v)) for v in variants]
    fig.legend(handles=handles, loc="outside upper center", ncol=3, fontsize=8, frameon=False,
               title=f"{study['tasks']}: target-task accuracy per strategy", title_fontsize=9)
    return fig


def transfer_ecdf_figure(study: dict):
    """Per strategy, the ECDF of per-sample critical ε: certified lower end (dashed) and PGD
    upper end (solid) for each source × target objective, with the threat ε marked."""
    strategies = _strategies(study)
    eps = study["threat"]["eps"]
    cols = min(len(strategies), 3)
    nrows = -(-len(strategies) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols + 1.5, 2.8 * nrows + 0.6), squeeze=False,
                             layout="constrained", sharex=True, sharey=True)
    hi = study["settings"]["eps_max_factor"] * eps
    seen = []
    for ax, strat in zip(axes.flat, strategies):
        for r in study["rows"]:
            if r["strategy"] != strat:
                continue
            v = _variant(study, r)
            name = f"{r['source_objective']}-{r['strategy']}-{r['target_objective']}"
            crit = study["critical_eps"][name]
            for kind, ls in (("certified", "--"), ("attack", "-")):
                vals = np.asarray(crit[kind], dtype=float)
                if not len(vals):
                    continue
                xs = np.sort(np.minimum(vals, hi))  # "not broken within the range" drawn at its end
                ax.step(np.concatenate([[0], xs]), np.arange(len(xs) + 1) / len(xs), where="post",
                        color=VARIANT_COLOURS[v], ls=ls, lw=1.3)
            if v not in seen:
                seen.append(v)
        ax.axvline(eps, color="0.4", ls=":", lw=0.9)
        ax.set_title(strat, fontsize=10)
        ax.set_xlim(0, hi)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(strategies):]:
        ax.set_visible(False)
    for ax in axes[-1, :]:
        ax.set_xlabel("critical ε")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of samples ≤ ε")
    handles = [matplotlib.lines.Line2D([], [], color=VARIANT_COLOURS[v], lw=2, label=_variant_label(study, *v))
               for v in seen]
    handles += [matplotlib.lines.Line2D([], [], color="0.2", ls="-", label="attack (upper end)"),
                matplotlib.lines.Line2D([], [], color="0.2", ls="--", label="certified (lower end, CROWN)"),
                matplotlib.lines.Line2D([], [], color="0.4", ls=":", label=f"threat ε = {eps:.4g}")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{study['tasks']}: per-sample critical ε (VERONA bounds), by strategy", fontsize=10)
    return fig
