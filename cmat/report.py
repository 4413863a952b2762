"""Human-readable views of a run: the closing summary table, ``cmat inspect``, ``cmat plot``."""
from __future__ import annotations

import json
from pathlib import Path

from cmat import bench as bench_mod
from cmat.attacks import sound_alpha
from cmat.config import from_dict
from cmat.errors import CmatError
from cmat.evaluate import eps_sweep, eval_subset, steps_sweep
from cmat.metrics import wilson_interval
from cmat.provenance import machine_line
from cmat.rundir import read_results
from cmat.plots import (
    accuracy_grid_figure,
    accuracy_matrix_figure,
    accuracy_title,
    curves_figure,
    eps_text,
    plt,
    task_bars_figure,
)
from cmat.store import load as load_run
from cmat.store import open_store
from cmat.tasks import tasks_for_config
from cmat.tblog import RunLogger
from cmat.transfer_study import study_markdown


def _interval(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_table(results: dict) -> str:
    """Per task (after the last task) accuracy under each attack plus the method's per-task
    decisions (sparsity, width) where it has them; then average, BWT, forgetting, the pooled
    95% interval with its n, and cost. Every column is on the same images (the header says
    when those are a subset, and the full-set clean accuracy follows)."""
    names = list(results["acc"])
    last = {n: results["acc"][n][-1] for n in names}
    records = {r["task"]: r for r in results.get("decisions", {}).get("tasks", [])}
    extra = [k for k in ("sparsity", "channel_sparsity", "width") if any(k in r for r in records.values())]
    width = max(12, max(len(t) for t in results["task_names"]) + 2)
    ev = results.get("eval", {})
    ns = ev.get("n") or []
    if ev.get("samples") is not None and ns != ev.get("n_test"):
        scope = f"every column on the same seeded subset of {ev['samples']} test images per task"
    else:
        scope = f"every column on the whole test set ({sum(ns)} images)" if ns else "whole test set"
    cw = 16
    lines = [f"{results['method']} / {results['objective']} on {results['tasks']}: accuracy after the last task, "
             f"{scope}; worst = correct clean and under every attack"
             + ("; certified = proven for the whole ε-ball" if "certified" in names else ""),
             f"{'task':<{width}}{'n':>6}" + "".join(f"{n:>{cw}}" for n in names) + "".join(f"{k:>10}" for k in extra)]
    for j, tname in enumerate(results["task_names"]):
        rec = records.get(j, {})
        cells = "".join(f"{rec[k]:>10.3f}" if k in rec else f"{'':>10}" for k in extra)
        n = f"{ns[j]:>6}" if j < len(ns) else f"{'':>6}"
        lines.append(f"{tname:<{width}}{n}" + "".join(f"{last[a][j]:>{cw}.4f}" for a in names) + cells)
    for key, label in (("acc", "average"), ("bwt", "BWT"), ("forgetting", "forgetting")):
        lines.append(f"{label:<{width}}{'':>6}" + "".join(f"{results['summary'][a][key]:>{cw}.4f}" for a in names))
    if all("ci95" in results["summary"][a] for a in names):
        pooled = [results["summary"][a] for a in names]
        lines.append(f"{'pooled 95% CI':<{width}}{pooled[0]['n']:>6}"
                     + "".join(f"{_interval(s['ci95']):>{cw}}" for s in pooled))
    if "clean_full" in results and ev.get("samples") is not None and ns != ev.get("n_test"):
        full = results["clean_full"]["acc"][-1]
        lines.append(f"clean accuracy on the whole test sets ({sum(ev['n_test'])} images): "
                     f"{sum(full) / len(full):.4f} (per task: " + ", ".join(f"{a:.3f}" for a in full) + ")")
    cost = results["cost"]
    evaluation = f" + evaluation {cost['eval_seconds']:.1f}s" if "eval_seconds" in cost else ""
    lines.append(f"train {cost['train_seconds']:.1f}s{evaluation}, {cost['params_total']:,} parameters, "
                 f"store {cost['store_bytes']:,} bytes")
    return "\n".join(lines)


def inspect_store(run_dir) -> str:
    """Tasks, networks, parameter counts and stored bytes per part of a run's store."""
    import h5py

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


# Sweeps (ε and PGD steps): attack-image budget and the step-size rule.
EPS_FACTORS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
SWEEP_STEPS = (1, 2, 5, 10, 20, 40)
EPS_SWEEP_STEPS = 10
ALPHA_RULE = "α = max(threat α, 2.5·ε/k)"


def attack_samples(samples, run_samples):
    """Images per task to attack: the run's own ``eval.samples`` when ``samples`` is None
    (None = the whole test set), else ``samples`` capped at the run's ``eval.samples``."""
    if samples is None:
        return run_samples
    return int(samples) if run_samples is None else min(int(samples), int(run_samples))


def sweeps(run_dir: Path, samples=None, data_root=None, progress: bool = True, label=None) -> dict:
    """Accuracy over ε (PGD-10) and over PGD steps (at the preset ε), averaged over the run's
    tasks, on the run's own attack subset (``attack_samples``). Every PGD uses
    α = max(threat α, 2.5·ε/k) for k steps (``cmat.attacks.sound_alpha``), recorded per row.

    Returns ``{"eps": [{"eps", "alpha", "steps", "acc"}], "steps": [...], "threat": {"eps",
    "alpha"}, "samples": images per task (None = whole test set), "alpha_rule": str}``. A
    tqdm bar (``progress``) counts attack evaluations, its description naming ``label`` (the
    method) and the task."""
    from tqdm import tqdm

    run = load_run(run_dir)
    cfg = run.config
    n = attack_samples(samples, cfg.eval.samples)
    seq = tasks_for_config(cfg, data_root, download=False)
    eps, alpha = cfg.threat.eps, cfg.threat.alpha
    eps_values = [f * eps for f in EPS_FACTORS]
    names = list(run.task_names)
    label = label or getattr(cfg, "method", None) or Path(run_dir).name
    bar = tqdm(total=len(names) * (len(eps_values) + len(SWEEP_STEPS)), disable=not progress, unit="attack")
    by_eps, by_steps = [], []
    for j, name in enumerate(names):
        bar.set_description(f"sweeps {label}: task {j + 1}/{len(names)} {name}")
        x, y = seq[j].test.tensors(eval_subset(len(seq[j].test), n, cfg.seed, j))
        model = run.model(j)
        rows = []
        for e in eps_values:  # one ε at a time: α depends on ε (eps_sweep takes one α/ε ratio)
            ratio = sound_alpha(e, alpha, EPS_SWEEP_STEPS) / e if e > 0 else 1.0
            rows += eps_sweep(model, x, y, [e], steps=EPS_SWEEP_STEPS, alpha_ratio=ratio, seed=cfg.seed)
            bar.update()
        by_eps.append(rows)
        rows = []
        for k in SWEEP_STEPS:  # one k at a time: α depends on k
            rows += steps_sweep(model, x, y, eps, sound_alpha(eps, alpha, k), [k], seed=cfg.seed)
            bar.update()
        by_steps.append(rows)
    bar.close()

    def mean(rows_per_task):
        return [{**rows_per_task[0][i], "acc": float(sum(r[i]["acc"] for r in rows_per_task) / len(rows_per_task))}
                for i in range(len(rows_per_task[0]))]

    return {"eps": mean(by_eps), "steps": mean(by_steps), "threat": {"eps": eps, "alpha": alpha},
            "samples": n, "alpha_rule": ALPHA_RULE}


def _run_dirs(p: Path) -> dict:
    """Method (None for a single run) → run directory, for a run or a bench directory."""
    if (p / "bench.json").exists():
        bench = json.loads((p / "bench.json").read_text())
        seed = bench["seeds"][0]
        return {r["method"]: p / f"{r['method']}-s{seed}" for r in bench["rows"]}
    if (p / "results.json").exists():
        return {None: p}
    raise CmatError(f"no results.json or bench.json in {p} (is it a finished run or bench directory?)")


def plot_run(run_dir, samples=None, data_root=None, progress: bool = True) -> list:
    """Plots for a run or a bench directory (PNG under ``DIR/plots``, also in ``DIR/tb``):

    * ``matrix_<attack>.png``: accuracy-matrix heat maps of every method under one attack;
    * ``matrix_<method>_<attack>.png``: the same, one method per figure;
    * ``tasks_bars.png``: per-task grouped bars (clean/FGSM/PGD-10/PGD-40/AA/worst, those
      present) after the last task, one panel per method;
    * ``acc_vs_eps.png``, ``acc_vs_steps.png`` (+ ``sweeps.json``): see ``sweeps``, which
      attacks ``attack_samples(samples, run's eval.samples)`` images per task.

    Returns the PNG paths."""
    p = Path(run_dir)
    run_dirs = _run_dirs(p)
    results = {m: read_results(d / "results.json") for m, d in run_dirs.items()}
    label = {m: (m or r.get("method", "run")) for m, r in results.items()}
    out = p / "plots"
    out.mkdir(exist_ok=True)
    attacks = list(dict.fromkeys(a for r in results.values() for a in r["acc"]))
    makers = {}
    for a in attacks:
        panels = {label[m]: (r["acc"][a], r["task_names"]) for m, r in results.items() if a in r["acc"]}
        makers[f"matrix_{a}"] = lambda panels=panels, a=a: accuracy_grid_figure(panels, a)
    for m, res in results.items():
        for name, mat in res["acc"].items():
            makers[f"matrix_{label[m]}_{name}"] = (
                lambda mat=mat, t=f"{label[m]}: {accuracy_title(name)}", names=res["task_names"]:
                accuracy_matrix_figure(mat, t, names))
    makers["tasks_bars"] = lambda: task_bars_figure({label[m]: r for m, r in results.items()})
    logger = RunLogger(p)
    paths = []

    def save(name, make):  # one figure open at a time
        fig = make()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120)
        logger.figure(f"plots/{name}", fig, 0)
        plt.close(fig)
        paths.append(path)

    try:
        for name, make in makers.items():
            save(name, make)
        curves = {label[m]: sweeps(d, samples, data_root, progress, label[m]) for m, d in run_dirs.items()}
        (out / "sweeps.json").write_text(json.dumps(curves, indent=1))
        eps = next(iter(curves.values()))["threat"]["eps"]
        save("acc_vs_eps", lambda: curves_figure(
            {m: c["eps"] for m, c in curves.items()}, "eps",
            f"PGD-{EPS_SWEEP_STEPS} accuracy over ε\n({ALPHA_RULE}, k = {EPS_SWEEP_STEPS})", eps=eps))
        save("acc_vs_steps", lambda: curves_figure(
            {m: c["steps"] for m, c in curves.items()}, "steps",
            f"PGD accuracy over steps k at the preset ε = {eps_text(eps)}\n({ALPHA_RULE})"))
    finally:
        logger.close()
    return paths


def run_markdown(results: dict, source: str = "") -> str:
    """A run's results as Markdown: per task (after the last task) every column with n, then the
    average, BWT, forgetting and the pooled 95% Wilson interval — rendered from results.json."""
    names = list(results["acc"])
    ev = results.get("eval", {})
    ns = ev.get("n") or [""] * len(results["task_names"])
    scope = (f"a seeded subset of {ev['samples']} test images per task" if ev.get("samples") is not None
             and ev.get("n") != ev.get("n_test") else "the whole test set")
    lines = [f"**{results['method']} / {results['objective']} on {results['tasks']}** "
             f"(seed {results.get('seed', '?')}; every column on {scope}; "
             "`worst` = correct clean and under every attack)" + (f" — `{source}`" if source else ""),
             "", "| task | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for j, t in enumerate(results["task_names"]):
        lines.append(f"| {t} | {ns[j]} | " + " | ".join(f"{results['acc'][a][-1][j]:.3f}" for a in names) + " |")
    for key, label in (("acc", "average"), ("bwt", "BWT"), ("forgetting", "forgetting")):
        lines.append(f"| {label} | | " + " | ".join(f"{results['summary'][a][key]:.3f}" for a in names) + " |")
    if all("ci95" in results["summary"][a] for a in names):
        n = results["summary"][names[0]]["n"]
        lines.append(f"| 95% CI (pooled) | {n} | "
                     + " | ".join(_interval(results["summary"][a]["ci95"]) for a in names) + " |")
    return "\n".join(lines + ["", machine_line([results.get("provenance", {})])]) + "\n"



SUBSET_TITLE = ("**On a seeded subset of {samples} test images per task** (`cmat eval RUN --save`; every column on "
                "those images; `run worst` = the run's whole-set worst there, `all` = correct under every attack of "
                "both; `broken` = images the run counted robust that this evaluation breaks; 95% Wilson intervals "
                "pooled over the images × seeds listed)")
WHOLE_TITLE = ("## Re-evaluated under stronger attacks, on the whole test set\n\n"
               "The same stored models after the last task, attacked again on every test image the run evaluated "
               "(`cmat eval RUN --attacks {attacks} --save`, written to `eval-all.json`/`.h5` in each run): "
               "`run worst` = the run's own worst above, `all` = correct clean and under every attack of both "
               "evaluations (the per-image worst over all of them: the number to quote), `broken` = images the run "
               "counted robust that the re-evaluation breaks. Pooled over tasks and the seeds listed, with 95% Wilson "
               "intervals over those images × seeds; BWT is not re-evaluated (it needs the models after each task).")


def subset_markdown(bench: Path, methods, seeds, whole: bool = False) -> str:
    """A table of the saved evaluations of a bench's runs (``cmat eval --save``, :mod:`cmat.reeval`):
    the seeded subset ones (``eval-s<N>.json``) or, with ``whole``, the whole-set re-evaluations
    (``eval-all.json``). Per method, every column of that evaluation, the run's own ``worst`` on
    the same images and the per-image worst over both; pooled over the seeds that have one
    (n = images × those seeds)."""
    pattern = "eval-all.json" if whole else "eval-s*.json"
    rows = []
    for m in methods:
        tables = [json.loads(f.read_text()) for s in seeds for f in sorted((bench / f"{m}-s{s}").glob(pattern))]
        if tables:
            rows.append((m, tables))
    if not rows:
        return ""
    first = rows[0][1][0]
    cols = list(first["mean"])
    title = (WHOLE_TITLE.format(attacks=",".join(first["attacks"])) if whole
             else SUBSET_TITLE.format(samples=first["samples"]))
    lines = ["", title, "", "| method | seeds | n | " + " | ".join(bench_mod.attack_label(c) for c in cols)
             + " | run worst | all | broken |",
             "|---|---|---|" + "---|" * (len(cols) + 3)]
    for m, tables in rows:
        n = sum(t["pooled"]["clean"][1] for t in tables)
        cell = [_interval_acc(sum(t["pooled"][c][0] for t in tables), n) for c in cols]
        checks = [t.get("check") for t in tables]
        if all(checks):
            cell += [_interval_acc(sum(c["run_robust"] for c in checks), n),
                     _interval_acc(sum(c["combined_robust"] for c in checks), n),
                     str(sum(c["added"] for c in checks))]
        else:
            cell += ["–", "–", "–"]
        seeds_done = ",".join(str(t.get("seed", "?")) for t in tables)
        lines.append(f"| {m} | {seeds_done} | {n} | " + " | ".join(cell) + " |")
    return "\n".join(lines) + "\n"


def reeval_markdown(bench: Path, methods, seeds, reference: str) -> str:
    """The whole-set re-evaluation table and, when every run has one, the paired tests against
    ``reference`` on the per-image worst over both evaluations."""
    table = subset_markdown(bench, methods, seeds, whole=True)
    if not table or not all((bench / f"{m}-s{s}" / "eval-all.h5").exists() for m in methods for s in seeds):
        return table
    tests = bench_mod.paired_tests(bench, methods, seeds, reference, files=("eval.h5", "eval-all.h5"))
    return table + bench_mod.paired_markdown(tests, reference, len(seeds), "`all` (re-evaluated)")


def _interval_acc(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]" if n else "–"


def read_bench(p: Path) -> tuple:
    """``(bench.json, methods, seeds)`` of a bench directory; a foreign file is one line."""
    try:
        bench = json.loads((p / "bench.json").read_text())
        return bench, [r["method"] for r in bench["rows"]], bench["seeds"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CmatError(f"{p / 'bench.json'} is not a cmat bench file: {err}") from None


def render_report(path) -> str:
    """Markdown tables rendered from result files: a run directory (results.json), a bench
    directory (bench.json + its run directories: mean ± std, McNemar, budget — recomputed) or a
    transfer-study directory (study.json)."""
    import yaml

    p = Path(path)
    if (p / "bench.json").exists():
        _, methods, seeds = read_bench(p)
        per_method = {m: [read_results(p / f"{m}-s{s}" / "results.json") for s in seeds] for m in methods}
        cfg = from_dict(yaml.safe_load((p / f"{methods[0]}-s{seeds[0]}" / "config.yaml").read_text()))
        columns = bench_mod.table_columns([r for rs in per_method.values() for r in rs])
        rows = [bench_mod.aggregate(m, rs, columns) for m, rs in per_method.items()]
        reference = bench_mod.reference_method(methods)
        tests = bench_mod.paired_tests(p, methods, seeds, reference)
        budget = bench_mod.run_budget(cfg, per_method[methods[0]][0], seeds,
                                      runs=[r for runs in per_method.values() for r in runs])
        return (bench_mod.to_markdown(rows, columns, cfg, seeds, budget, reference, tests)
                + subset_markdown(p, methods, seeds) + reeval_markdown(p, methods, seeds, reference))
    if (p / "study.json").exists():
        try:
            study = json.loads((p / "study.json").read_text())
            if study.get("format") != "cmat-transfer-study":
                raise KeyError("format")
            return study_markdown(study)
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
            raise CmatError(f"{p / 'study.json'} is not a cmat transfer-study file: {err}") from None
    if (p / "results.json").exists():
        return run_markdown(read_results(p / "results.json"))
    raise CmatError(f"no results.json, bench.json or study.json in {p} (is it a finished run, bench or study?)")
