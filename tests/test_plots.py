"""Readability of `cmat plot` figures, on small fake results (no training)."""
import pytest

from cmat.plots import (accuracy_grid_figure, accuracy_matrix_figure, curves_figure, plt, task_bars_figure,
                        text_colour)
from cmat.report import attack_samples

NAMES = ["digits-0-1", "digits-2-3", "digits-4-5"]


def fake_results(keys=("clean", "fgsm", "pgd10", "pgd40", "aa", "worst"), high=0.97):
    """Accuracies near the top of the axes, where an in-axes legend would land on the bars."""
    acc = {k: [[high - 0.1 * n - 0.01 * j for j in range(i + 1)] for i in range(len(NAMES))]
           for n, k in enumerate(keys)}
    return {"acc": acc, "task_names": NAMES}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def cell_texts(ax):
    return {t.get_text(): t for t in ax.texts}


def test_cell_text_colour_follows_the_background():
    fig = accuracy_matrix_figure([[0.05], [0.95, 0.5]], "t", NAMES[:2])
    texts = cell_texts(fig.axes[0])
    assert texts["0.05"].get_color() != texts["0.95"].get_color()
    assert text_colour(0.05) == "white" and text_colour(0.95) == "black"


def test_matrix_ticks_are_task_names():
    fig = accuracy_matrix_figure(fake_results()["acc"]["clean"], "clean", NAMES)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert ax.get_xlabel() == "evaluated task" and ax.get_ylabel() == "after training task"
    assert len(fig.axes) == 2  # the heat map and its colourbar


def test_grid_has_one_axes_per_method_and_one_colourbar():
    res = {m: fake_results() for m in ("cmat", "at-finetune", "at-individual")}
    fig = accuracy_grid_figure({m: (r["acc"]["pgd10"], r["task_names"]) for m, r in res.items()}, "pgd10")
    heat = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heat] == list(res)
    assert len(fig.axes) == len(res) + 1
    assert all(ax.images[0].get_clim() == (0, 1) for ax in heat)


def test_bar_legend_covers_no_bar():
    res = {"cmat": fake_results(), "at-finetune": fake_results(("clean", "pgd10", "worst"), high=1.0)}
    fig = task_bars_figure(res)
    fig.canvas.draw()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert labels == ["clean", "fgsm", "pgd10", "pgd40", "aa", "worst"]
    bars = [p for ax in fig.axes for p in ax.patches]
    assert len(bars) == 3 * (6 + 3)
    assert len({p.get_facecolor() for p in bars}) == 6  # one distinct colour per attack
    for legend in legends:
        box = legend.get_window_extent()
        assert not any(box.overlaps(p.get_window_extent()) for p in bars)
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == NAMES


def test_bars_without_aa_or_worst():
    fig = task_bars_figure({"m": fake_results(("clean", "pgd10"))})
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["clean", "pgd10"]


def test_curves_legend_outside_and_labelled():
    rows = {m: [{"eps": e, "acc": 1 - 5 * e} for e in (0, 0.01, 0.03)] for m in ("a", "b")}
    fig = curves_figure(rows, "eps", "PGD-10", eps=0.03)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert "ε" in ax.get_xlabel() and "[0,1]" in ax.get_xlabel()
    assert not ax.get_window_extent().overlaps(ax.get_legend().get_window_extent())


def test_sweep_samples_follow_the_run():
    assert attack_samples(None, 50) == 50
    assert attack_samples(None, None) is None
    assert attack_samples(200, 50) == 50
    assert attack_samples(30, 50) == 30
    assert attack_samples(30, None) == 30
