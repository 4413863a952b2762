"""Human-readable views of a run: the closing summary table, ``cmat inspect``, ``cmat plot``."""
from __future__ import annotations

import json
from pathlib import Path

from cmat.errors import CmatError


def summary_table(results: dict) -> str:
    """Per task (after the last task) accuracy under each attack plus the method's per-task
    decisions (sparsity, width) where it has them; then average, BWT, forgetting and cost."""
    names = list(results["acc"])
    last = {n: results["acc"][n][-1] for n in names}
    records = {r["task"]: r for r in results.get("decisions", {}).get("tasks", [])}
    extra = [k for k in ("sparsity", "channel_sparsity", "width") if any(k in r for r in records.values())]
    width = max(12, max(len(t) for t in results["task_names"]) + 2)
    lines = [f"{results['method']} / {results['objective']} on {results['tasks']}",
             f"{'task':<{width}}" + "".join(f"{n:>9}" for n in names) + "".join(f"{k:>17}" for k in extra)]
    for j, tname in enumerate(results["task_names"]):
        rec = records.get(j, {})
        cells = "".join(f"{rec[k]:>17.3f}" if k in rec else f"{'':>17}" for k in extra)
        lines.append(f"{tname:<{width}}" + "".join(f"{last[n][j]:>9.4f}" for n in names) + cells)
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


def _read_results(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
        results["acc"]
        return results
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CmatError(f"{path} is not a cmat results file: {err}") from None


def sweeps(run_dir: Path, samples: int = 200, data_root=None) -> dict:
    """Accuracy over ε and over PGD steps, averaged over the run's tasks (a seeded subset of
    ``samples`` test images per task)."""
    import cmat
    from cmat.evaluate import eps_sweep, eval_subset, steps_sweep
    from tasks import get_tasks

    run = cmat.load(run_dir)
    cfg = run.config
    seq = get_tasks(cfg.tasks, data_root=data_root or cfg.data_root, seed=cfg.seed,
                    val_fraction=cfg.train.val_fraction)
    eps, alpha = cfg.threat.eps, cfg.threat.alpha
    eps_values = [0.0, eps / 4, eps / 2, eps, 1.5 * eps, 2 * eps]
    step_values = [1, 2, 5, 10, 20, 40]
    by_eps, by_steps = [], []
    for j in range(len(run.task_names)):
        x, y = seq[j].test.tensors(eval_subset(len(seq[j].test), samples, cfg.seed, j))
        model = run.model(j)
        by_eps.append(eps_sweep(model, x, y, eps_values, steps=10, alpha_ratio=alpha / eps, seed=cfg.seed))
        by_steps.append(steps_sweep(model, x, y, eps, alpha, step_values, seed=cfg.seed))

    def mean(rows_per_task):
        return [{**rows_per_task[0][i], "acc": float(sum(r[i]["acc"] for r in rows_per_task) / len(rows_per_task))}
                for i in range(len(rows_per_task[0]))]

    return {"eps": mean(by_eps), "steps": mean(by_steps)}


def plot_run(run_dir, samples: int = 200, data_root=None) -> list:
    """Plots for a run or a bench directory (PNG under ``DIR/plots``, also in ``DIR/tb``):
    accuracy-matrix heat maps, per-task grouped bars (clean / PGD-10 / PGD-40) per method,
    accuracy against ε and against PGD steps per method. Returns the PNG paths."""
    from cmat.plots import accuracy_matrix_figure, curves_figure, plt, task_bars_figure
    from cmat.tblog import RunLogger

    p = Path(run_dir)
    if (p / "bench.json").exists():
        bench = json.loads((p / "bench.json").read_text())
        seed = bench["seeds"][0]
        run_dirs = {r["method"]: p / f"{r['method']}-s{seed}" for r in bench["rows"]}
    elif (p / "results.json").exists():
        run_dirs = {None: p}
    else:
        raise CmatError(f"no results.json or bench.json in {p} (is it a finished run or bench directory?)")
    results = {m: _read_results(d / "results.json") for m, d in run_dirs.items()}
    label = {m: (m or r.get("method", "run")) for m, r in results.items()}
    out = p / "plots"
    out.mkdir(exist_ok=True)
    curves = {label[m]: sweeps(d, samples, data_root) for m, d in run_dirs.items()}
    (out / "sweeps.json").write_text(json.dumps(curves, indent=1))
    makers = {}
    for m, res in results.items():
        for name, mat in res["acc"].items():
            makers[f"matrix_{label[m]}_{name}"] = (lambda mat=mat, t=f"{label[m]} {name}": accuracy_matrix_figure(mat, t))
    makers["tasks_bars"] = lambda: task_bars_figure({label[m]: r for m, r in results.items()})
    makers["acc_vs_eps"] = lambda: curves_figure({m: c["eps"] for m, c in curves.items()}, "eps",
                                                 "PGD-10 accuracy over ε")
    makers["acc_vs_steps"] = lambda: curves_figure({m: c["steps"] for m, c in curves.items()}, "steps",
                                                   "PGD accuracy over steps at the preset ε")
    logger = RunLogger(p)
    paths = []
    for name, make in makers.items():  # one figure open at a time
        fig = make()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        logger.figure(f"plots/{name}", fig, 0)
        plt.close(fig)
        paths.append(path)
    logger.close()
    return paths
