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
