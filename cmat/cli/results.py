"""Reading finished runs: ``cmat eval``, ``inspect``, ``plot`` and ``report``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cmat.cli.names import registry_option


@click.command("eval", short_help="Re-evaluate a trained run's tasks under attacks.")
@click.argument("run_dir", type=click.Path())
@registry_option("--attacks", registry="attack", default=None,
                 help="Comma-separated evaluation attacks: {names}; N = steps, e.g. pgd10; worst is always "
                      "added (default: the run's).")
@click.option("--samples", default=None, type=int,
              help="Attack a fixed seeded subset of N test images per task (default: the run's eval.samples).")
@click.option("--data-root", default=None, help="Dataset folder (default $CMAT_DATA or ./data).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_cmd(run_dir, attacks, samples, data_root, device, as_json):
    """Evaluate a trained run's tasks under attacks (reads store.h5)."""
    from cmat.engine import resolve_device
    from cmat.evaluate import WORST, attacks_as_run, check_names, evaluate_task, task_attacks
    from cmat.metrics import wilson_interval
    from cmat.store import load as load_run
    from cmat.tasks import tasks_for_config

    loaded = load_run(run_dir)
    cfg = loaded.config
    requested = [a.strip() for a in attacks.split(",")] if attacks else list(cfg.eval.attacks)
    check_names(requested)  # names first, before any data is loaded
    seq = tasks_for_config(cfg, data_root, download=False)
    # every task's attacks sized to its head, before anything is evaluated (apgd-t, aa)
    built = task_attacks(requested, cfg.threat.eps, cfg.threat.alpha,
                         [seq[j].num_classes for j in range(len(loaded.task_names))], alphas=cfg.eval.alphas,
                         task_names=loaded.task_names)
    names = list(built[0])
    dev = resolve_device(device)
    samples = samples if samples is not None else cfg.eval.samples
    per_task = []
    for j, atks in enumerate(built):
        model = loaded.model(j).to(dev)
        res = evaluate_task(model, seq[j].test, atks, seq[j].num_classes, cfg.seed, j, samples,
                            cfg.eval.batch_size, dev)
        columns = [n for n in res if n in names or n == WORST]
        per_task.append({"task": j, "name": loaded.task_names[j],
                         **{n: {k: res[n][k] for k in ("acc", "f1", "n")} for n in columns}})
    columns = [n for n in per_task[0] if n not in ("task", "name")]
    pooled = {n: (sum(round(r[n]["acc"] * r[n]["n"]) for r in per_task), sum(r[n]["n"] for r in per_task))
              for n in columns}
    report = {"run": str(run_dir), "samples": samples,
              "attacks": attacks_as_run(built),
              "tasks": per_task,
              "mean": {n: sum(r[n]["acc"] for r in per_task) / len(per_task) for n in columns},
              "ci95": {n: list(wilson_interval(*pooled[n])) for n in columns}}
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(f"every column on the same {'seeded subset of ' + str(samples) if samples else 'whole test set of'} "
               f"images per task; worst = correct clean and under every attack")
    header = f"{'task':<24}{'n':>6}" + "".join(f"{n:>16}" for n in columns)
    click.echo(header)
    for r in per_task:
        click.echo(f"{r['name'][:24]:<24}{r['clean']['n']:>6}" + "".join(f"{r[n]['acc']:>16.4f}" for n in columns))
    click.echo(f"{'mean':<24}{'':>6}" + "".join(f"{report['mean'][n]:>16.4f}" for n in columns))
    click.echo(f"{'pooled 95% CI':<24}{pooled['clean'][1]:>6}"
               + "".join(f"{'[%.3f, %.3f]' % tuple(report['ci95'][n]):>16}" for n in columns))


@click.command(short_help="Summarise a run's store: tasks, networks, bytes.")
@click.argument("run_dir", type=click.Path())
def inspect(run_dir):
    """Summarise a run's store: tasks, networks, parameters, bytes per part."""
    from cmat.report import inspect_store

    click.echo(inspect_store(run_dir))


@click.command(short_help="Plot a run or bench: heat maps, bars, ε and step sweeps.")
@click.argument("run_dir", type=click.Path())
@click.option("--samples", default=None, type=int,
              help="Test images per task for the ε/steps sweeps (default: the run's eval.samples; capped at it).")
@click.option("--data-root", default=None, help="Dataset folder (default $CMAT_DATA or ./data).")
def plot(run_dir, samples, data_root):
    """Plot a run or bench directory: heat maps, per-task bars, accuracy over ε and steps."""
    from cmat.report import plot_run

    for path in plot_run(run_dir, samples, data_root):
        click.echo(f"wrote {path}")


@click.command(short_help="Render a run's or bench's result tables as Markdown.")
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Also write the tables to this file.")
def report(run_dir, out):
    """Render the results tables of a run or bench directory from its result files, as Markdown
    (the tables in README/docs are made with this command, never typed)."""
    from cmat.report import render_report

    text = render_report(run_dir)
    if out:
        Path(out).write_text(text, encoding="utf-8")
    click.echo(text, nl=False)
