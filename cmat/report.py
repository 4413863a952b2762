"""Human-readable views of a run: the closing summary table, ``cmat inspect``, ``cmat plot``."""
from __future__ import annotations

import json
from pathlib import Path

from cmat.errors import CmatError


def summary_table(results: dict) -> str:
    """Per task (after the last task) accuracy under each attack, then ACC, BWT, forgetting."""
    names = list(results["acc"])
    last = {n: results["acc"][n][-1] for n in names}
    width = max(12, max(len(t) for t in results["task_names"]) + 2)
    lines = [f"{results['method']} / {results['objective']} on {results['tasks']}",
             f"{'task':<{width}}" + "".join(f"{n:>9}" for n in names)]
    for j, tname in enumerate(results["task_names"]):
        lines.append(f"{tname:<{width}}" + "".join(f"{last[n][j]:>9.4f}" for n in names))
    for key, label in (("acc", "average"), ("bwt", "BWT"), ("forgetting", "forgetting")):
        lines.append(f"{label:<{width}}" + "".join(f"{results['summary'][n][key]:>9.4f}" for n in names))
    cost = results["cost"]
    lines.append(f"train {cost['train_seconds']:.1f}s, {cost['params_total']:,} parameters, "
                 f"store {cost['store_bytes']:,} bytes")
    return "\n".join(lines)


def inspect_store(run_dir) -> str:
    """Tasks, networks, parameter counts and stored bytes per part of a run's store."""
    import h5py

    from cmat.store import open_store

    p = Path(run_dir)
    path = p / "store.h5" if p.is_dir() else p
    with open_store(path) as f:
        lines = [f"store {path} ({path.stat().st_size:,} bytes): method {f.attrs['method']}, "
                 f"objective {f.attrs['objective']}, tasks {f.attrs['tasks']}"]
        for j, name in enumerate(json.loads(f.attrs["task_names"])):
            g = f["tasks"][str(j)]
            lines.append(f"  task {j}: {name} ({int(g.attrs['num_classes'])} classes) → network "
                         f"{int(g.attrs['network'])}, head {int(g.attrs['head'])}")
        for k in sorted(f["networks"], key=int):
            g = f["networks"][k]
            spec = json.loads(g.attrs["spec"])
            n_values, n_bytes = 0, 0

            def visit(_, obj):
                nonlocal n_values, n_bytes
                if isinstance(obj, h5py.Dataset):
                    n_values += obj.size
                    n_bytes += obj.id.get_storage_size()

            g.visititems(visit)
            lines.append(f"  network {k}: {spec['arch']} width {spec['width']}, {n_values:,} stored values, "
                         f"{n_bytes:,} bytes on disk ({8 * n_bytes / max(n_values, 1):.2f} bits/value)")
    return "\n".join(lines)


def plot_run(run_dir) -> list:
    """Accuracy-matrix heat maps per attack from ``results.json``; returns the PNG paths."""
    from cmat.plots import accuracy_matrix_figure, plt

    p = Path(run_dir)
    res_path = p / "results.json"
    if not res_path.exists():
        raise CmatError(f"no results.json in {p} (is it a finished run directory?)")
    try:
        results = json.loads(res_path.read_text())
        acc = results["acc"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CmatError(f"{res_path} is not a cmat results file: {err}") from None
    out = p / "plots"
    out.mkdir(exist_ok=True)
    paths = []
    for name, mat in acc.items():
        fig = accuracy_matrix_figure(mat, f"{results.get('method', '')} {name}")
        path = out / f"matrix_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
