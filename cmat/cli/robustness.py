"""Robustness beyond the training run: ``cmat verify`` (critical ε), ``cmat transfer`` and
``cmat transfer-study`` (robustness transfer)."""
from __future__ import annotations

import json
import os

import click

from cmat.cli.common import launch_options, launcher_flags, overrides
from cmat.cli.names import DEFAULT_BOUND, check_name, registry_option
from cmat.cli.results import parse_radius
from cmat.errors import CmatError

# transfer-study's default --jobs on a CPU: the cores, at most this many worker processes
STUDY_JOBS_CAP = 8


def criteria_text(report: dict) -> str:
    """``cmat verify --criteria`` as a table: per task, the count of each criterion."""
    cols = list(report["total"])
    lines = [f"'verified' counts at ε = {report['eps']:.6g} (shield: SHIELD's argmax test, not a certificate; "
             "the others are sound" + ("; *_broken: counted, yet broken by an attack of the run" if
                                       "shield_broken" in cols else "") + ")",
             f"{'task':<20}" + "".join(f"{c:>18}" for c in cols)]
    for r in [*report["tasks"], {"name": "total", **report["total"]}]:
        lines.append(f"{r['name'][:20]:<20}" + "".join(f"{r[c]:>18}" for c in cols))
    return "\n".join(lines)


@click.command(short_help="Per-sample critical ε: certified and attack bounds.")
@click.argument("run_dir", type=click.Path())
@click.option("--task", "task", default=0, show_default=True, type=int, help="Task index j.")
@click.option("--n", "n", default=100, show_default=True, type=int, help="First N test images of the task.")
@registry_option("--bound", registry="bound", default=DEFAULT_BOUND, show_default=True,
                 help="Bound: {names} (alpha-crown: optimised slopes; milp: exact, small networks, "
                      "per-sample time limit).")
@click.option("--eps-max", default=None, type=float, help="Bisection range [0, eps-max] (default 4× the run's ε).")
@click.option("--iters", default=12, show_default=True, type=int, help="Bisection steps.")
@click.option("--max-neurons", default=512, show_default=True, type=int,
              help="crown/alpha-crown: layers with more unstable neurons keep IBP bounds (faster, looser); "
                   "0 refines every layer (memory is chunked; time grows with the layer width).")
@click.option("--time-limit", default=10.0, show_default=True, type=float,
              help="milp: seconds per sample and ε; an unfinished check counts as not certified (unknown).")
@click.option("--at-eps", "at_eps", is_flag=True,
              help="Only certify at the run's ε (one check per image, no bisection, no CSV): certified count, "
                   "seconds and (milp) unknown checks.")
@click.option("--criteria", "criteria", is_flag=True,
              help="The first N images the run evaluated per task: how many SHIELD's 'verified' count (argmax of the "
                   "lower logits = argmax of the upper = label; unsound) against the sound interval and margin (IBP, "
                   "CROWN) tests, and how many of SHIELD's the run's attacks broke.")
@click.option("--eps", "eps", default=None, callback=lambda ctx, param, v: parse_radius(v),
              help="--criteria: the radius, a number or a fraction such as 2/255 (default: the run's ε).")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Output folder (RUN_DIR/verify).")
@click.option("--data-root", default=None, help="Dataset folder (default $CMAT_DATA or ./data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(run_dir, task, n, bound, eps_max, iters, max_neurons, time_limit, at_eps, criteria, eps, out, data_root,
           as_json):
    """Per-sample critical ε: certified lower end (IBP/CROWN) and PGD upper end; CSV + ECDF."""
    from cmat.verify import certify_at_eps, criteria_run, verify_run

    check_name("bound", bound, "--bound")
    if n < 1:
        raise CmatError(f"--n must be ≥ 1, got {n}")
    if time_limit <= 0:
        raise CmatError(f"--time-limit must be > 0, got {time_limit}")
    if max_neurons < 0:
        raise CmatError(f"--max-neurons must be ≥ 0 (0: no limit), got {max_neurons}")
    if criteria:
        report = criteria_run(run_dir, n, eps, data_root)
        click.echo(json.dumps(report, indent=1) if as_json else criteria_text(report))
        return
    if at_eps:
        summary = certify_at_eps(run_dir, task, n, bound, time_limit, max_neurons or None, data_root)
    else:
        summary = verify_run(run_dir, task, n, bound, eps_max, out, data_root, iters, time_limit=time_limit,
                             max_neurons=max_neurons or None)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for k, v in summary.items():
        click.echo(f"{k}: {v}")


@click.command(short_help="Adapt a robust source to one target task.")
@click.option("--source", "source", required=True, type=click.Path(), help="Run directory of the robust source.")
@click.option("--source-task", default=0, show_default=True, type=int, help="Source task index.")
@registry_option("--tasks", "target", registry="tasks", required=True, help="Target task sequence: {names}.")
@click.option("--task", "target_task", default=0, show_default=True, type=int, help="Target task index.")
@registry_option("--strategies", registry="strategy", default="linear,tl-1,finetune,lwf,scratch", show_default=True,
                 help="Comma-separated transfer strategies: {names} (tl-K: the last K layers retrained).")
@registry_option("--objectives", registry="objective", default="standard,pgd", show_default=True,
                 help="Comma-separated target training objectives: {names} (ibp/crown-ibp use the preset's "
                      "certified recipe).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--epochs", default=None, type=int, help="Epochs per target training (train.epochs).")
@click.option("--eval-samples", default=None, type=int, help="Attack a fixed seeded subset of N test images.")
@registry_option("--attacks", registry="attack", default="clean,pgd10,pgd40", show_default=True,
                 help="Comma-separated evaluation attacks: {names}; N = steps, e.g. pgd10.")
@click.option("--data-root", default=None, help="Dataset folder (default $CMAT_DATA or ./data).")
@click.option("--download", is_flag=True, help="Download missing datasets (torchvision, md5-checked).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--set", "set_", multiple=True, help="Override any config key, e.g. --set method_options.lwf_lambda=0.5")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def transfer(source, source_task, target, target_task, strategies, objectives, out, no_progress, **flags):
    """Adapt a robust source to a target task: linear, tl-K, finetune, lwf vs scratch."""
    from cmat.transfer import run_transfer

    flags["tasks"] = target
    report = run_transfer(source, source_task, target, target_task,
                          [s.strip() for s in strategies.split(",") if s.strip()],
                          [o.strip() for o in objectives.split(",") if o.strip()], out, overrides(**flags),
                          progress=not no_progress)
    click.echo(report["markdown"])
    click.echo(f"wrote {out}/transfer.json, transfer.csv, transfer.md, transfer.png")


@click.command("transfer-study", short_help="The whole robustness-transfer study in one command.")
@registry_option("--tasks", registry="tasks", required=True,
                 help="Sequence holding source and target task, e.g. digits-2split; any of: {names}.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Study directory.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="YAML file over the preset.")
@click.option("--source-task", default=0, show_default=True, type=int, help="Source task index.")
@click.option("--target-task", default=1, show_default=True, type=int, help="Target task index.")
@registry_option("--strategies", registry="strategy", default=None,
                 help="Comma-separated transfer strategies: {names} (default linear,tl-K,finetune,lwf with the "
                      "architecture's K; scratch is always run).")
@click.option("--jobs", default=None, type=int,
              help=f"Worker processes (default: the CPU cores, at most {STUDY_JOBS_CAP}, on a CPU; 1 on a GPU).")
@click.option("--verify-samples", default=30, show_default=True, type=int,
              help="Correct test images per cell whose critical ε is bracketed (ECDF).")
@registry_option("--objective", registry="objective", default=None,
                 help="The robust objective of the robust source and robust targets: {names} (default: {default}); "
                      "ibp or crown-ibp make a certified study with the preset's certified recipe.")
@click.option("--seed", default=None, type=int, help="Seed (default: the preset's).")
@click.option("--epochs", default=None, type=int, help="Epochs per training (train.epochs).")
@click.option("--eval-samples", default=None, type=int, help="Attack a fixed seeded subset of N test images.")
@registry_option("--attacks", registry="attack", default=None,
                 help="Comma-separated evaluation attacks: {names}; N = steps, e.g. pgd10 (default: {default}).")
@click.option("--data-root", default=None, help="Dataset folder (default $CMAT_DATA or ./data).")
@click.option("--download", is_flag=True, help="Download missing datasets (torchvision, md5-checked).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--set", "set_", multiple=True, help="Override any config key, e.g. --set method_options.lwf_lambda=0.5")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@launcher_flags
def transfer_study(out, config_file, source_task, target_task, strategies, jobs, verify_samples, no_progress, **flags):
    """The robustness-transfer study in one command: a standard and a robust source (PGD, or
    --objective), every strategy × target objective plus scratch; attacks, certification, cost;
    study.csv/md and plots."""
    from cmat import config as config_mod
    from cmat.engine import resolve_device
    from cmat.transfer_study import run_study, study_markdown

    launch_opts = launch_options(flags, config_file)
    cfg = config_mod.resolve(flags.get("tasks"), config_file, overrides(**flags))
    if jobs is None:
        jobs = 1 if resolve_device(cfg.device).type == "cuda" else max(1, min(os.cpu_count() or 1, STUDY_JOBS_CAP))
    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    study = run_study(cfg, out, source_task, target_task, names, jobs, verify_samples, progress=not no_progress,
                      say=lambda m: click.echo(m, err=False), launch_opts=launch_opts)
    if study.get("pending"):
        click.echo("dry run: nothing was submitted" if launch_opts.dry_run else
                   "SLURM jobs queued or running; run the same command again to collect them")
        return
    click.echo(study_markdown(study))
    click.echo(f"wrote {out}/study.csv, study.md, study.json, critical_eps.csv, pareto.png, bars.png, ecdf.png")
