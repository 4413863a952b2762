"""Reading finished runs: ``cmat eval``, ``inspect``, ``plot`` and ``report``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cmat.cli.names import registry_option
from cmat.errors import CmatError


def parse_radius(text):
    """``--eps``: None, a number, or a fraction ``a/b`` (``20/255``) → float; else one line."""
    if text is None:
        return None
    try:
        num, _, den = str(text).partition("/")
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise CmatError(f"--eps must be a number or a fraction such as 20/255, got {text!r}") from None


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
@click.option("--batch-size", default=None, type=int,
              help="Images per attack batch (default: the run's eval.batch_size); AutoAttack's Square "
                   "costs per batch, so larger is faster on CPU.")
@click.option("--save", is_flag=True,
              help="Write RUN/eval-all.h5 (per-image outcomes on the run's own images; eval-s<N>.h5 on a "
                   "subset of N) and .json (the table, and which images the run counted robust that these "
                   "attacks break); a bench report then adds the per-image worst over both.")
@click.option("--eps", default=None, callback=lambda ctx, param, v: parse_radius(v),
              help="Attack radius, a number or a fraction such as 20/255 (default: the run's ε); at another "
                   "ε the run's α scales with it, and --save writes RUN/eval-eps<ε>-all (or -s<N>).")
def eval_cmd(run_dir, attacks, samples, data_root, device, as_json, batch_size, save, eps):
    """Evaluate a trained run's tasks under attacks (reads store.h5)."""
    from cmat import reeval
    from cmat.engine import resolve_device

    requested = [a.strip() for a in attacks.split(",")] if attacks else None
    ev = reeval.evaluate_run(run_dir, requested, samples, data_root, resolve_device(device), batch_size, eps)
    report = reeval.summarise(ev)
    if save:
        path = reeval.save(ev, run_dir)
        report = json.loads(path.read_text())
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    columns, samples = list(report["mean"]), report["samples"]
    click.echo(f"every column on the same {'seeded subset of ' + str(samples) if samples else 'whole test set of'} "
               f"images per task, at ε = {report['eps']:.6g}; worst = correct clean and under every attack")
    click.echo(f"{'task':<24}{'n':>6}" + "".join(f"{n:>16}" for n in columns))
    for r in report["tasks"]:
        click.echo(f"{r['name'][:24]:<24}{r['clean']['n']:>6}" + "".join(f"{r[n]['acc']:>16.4f}" for n in columns))
    click.echo(f"{'mean':<24}{'':>6}" + "".join(f"{report['mean'][n]:>16.4f}" for n in columns))
    click.echo(f"{'pooled 95% CI':<24}{report['pooled']['clean'][1]:>6}"
               + "".join(f"{'[%.3f, %.3f]' % tuple(report['ci95'][n]):>16}" for n in columns))
    check = report.get("check")
    if check:
        click.echo(f"on these images the run's own worst (eval.h5) counted {check['run_robust']} robust; "
                   f"{check['added']} of them are broken here; robust to every attack of both: "
                   f"{check['combined_robust']}/{check['n']}")
    if save:
        click.echo(f"wrote {path} and {path.with_suffix('.h5')}")


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
