"""``cmat run`` and ``cmat bench``: training one method, or several, over a task sequence."""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from cmat.cli.common import launch_flags, launch_options, overrides
from cmat.cli.names import registry_option
from cmat.errors import CmatError


@click.command(short_help="Train one method over a task sequence, evaluating each task.")
@registry_option("--tasks", registry="tasks", default=None,
                 help="Task sequence: {names} (default: {default}; `cmat tasks` describes each).")
@registry_option("--method", registry="method", default=None,
                 help="Method: {names} (default: {default}; `cmat methods` describes each).")
@registry_option("--objective", registry="objective", default=None,
                 help="Training objective: {names} (default: {default}).")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--seed", default=None, type=int, help="Seed of the run (default: the preset's).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="YAML file over the preset.")
@click.option("--epochs", default=None, type=int, help="Epochs per task (train.epochs).")
@click.option("--max-tasks", default=None, type=int, help="Only the first N tasks of the sequence (rehearsals).")
@click.option("--train-samples", default=None, type=int, help="Train on a seeded subset of N images per task.")
@click.option("--eval-samples", default=None, type=int, help="Attack a fixed seeded subset of N test images per task.")
@registry_option("--attacks", registry="attack", default=None,
                 help="Comma-separated evaluation attacks: {names}; N = steps, e.g. pgd10; worst is always "
                      "added (default: {default}).")
@click.option("--eps", default=None, help="Threat ε in [0,1] pixel units (e.g. 8/255).")
@click.option("--alpha", default=None, help="Attack step α in pixel units.")
@click.option("--batch-size", default=None, type=int, help="Training minibatch size (train.batch_size).")
@registry_option("--arch", registry="arch", default=None, help="Backbone: {names} (default: {default}).")
@click.option("--data-root", default=None, help="Dataset folder (default $CMAT_DATA or ./data).")
@click.option("--download", is_flag=True, help="Download missing datasets (torchvision, md5-checked).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--deterministic", is_flag=True, help="Ask torch for deterministic kernels.")
@click.option("--set", "set_", multiple=True, help="Override any config key: --set train.lr=0.05")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--force", is_flag=True, help="Overwrite a finished run in --out.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--estimate-only", is_flag=True,
              help="Print what the run would cost on this device (a few timed steps) and exit; writes nothing.")
def run(out, config_file, resume, force, no_progress, estimate_only, **flags):
    """Train a method over a task sequence and evaluate it after every task.

    Under ``torchrun --nproc_per_node N -m cmat run ...`` it trains data-parallel (DDP); rank 0
    writes the run directory and prints."""
    from cmat import config as config_mod
    from cmat.catalog import check_option_keys
    from cmat.distributed import is_main_process
    from cmat.engine import Run
    from cmat.rundir import RunLock, staging_dir, swap_in

    if resume and force:
        raise CmatError("--resume and --force contradict each other: --resume continues the run in --out, "
                        "--force replaces it")
    cfg = config_mod.resolve(flags.get("tasks"), config_file, overrides(**flags))
    check_option_keys(cfg.method_options)
    if estimate_only:
        Run(cfg, out or ".", progress=False).estimate_only()
        return
    out = Path(out or Path("checkpoints") / f"{cfg.tasks}-{cfg.method}-{cfg.objective.name}-s{cfg.seed}")
    if out.exists() and not out.is_dir():
        raise CmatError(f"--out {out} exists and is not a directory")
    main_process = is_main_process()
    if not main_process:  # rank > 0 under torchrun: rank 0 owns the directory and its lock
        Run(cfg, out, progress=not no_progress, resume=resume).execute()
        return
    with RunLock(out):
        finished = (out / "results.json").exists()
        if finished and not force:
            raise CmatError(f"{out} already holds a finished run; pass --force to replace it (the old run is kept "
                            "until the new one finishes) or choose another --out")
        # --force: train beside the finished run and swap it in only when the new run has finished
        target = staging_dir(out) if finished else out
        try:
            results = Run(cfg, target, progress=not no_progress, resume=resume).execute()
        except BaseException:
            if target != out:
                shutil.rmtree(target, ignore_errors=True)
            raise
        if target != out:
            swap_in(target, out)
    from cmat.report import summary_table

    click.echo(summary_table(results))
    click.echo(f"wrote {out}/results.json, store.h5, config.yaml, tb/")


@click.command(short_help="Train several methods × seeds alike; tabulate and test them.")
@registry_option("--tasks", registry="tasks", default=None, help="Task sequence: {names} (default: {default}).")
@registry_option("--methods", registry="method", default="cmat,packnet,anp-vs,at-finetune,at-individual",
                 show_default=True, help="Comma-separated methods, any of: {names}.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Bench directory.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@registry_option("--objective", registry="objective", default=None,
                 help="Training objective of every run: {names} (default: {default}).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="YAML file over the preset.")
@click.option("--epochs", default=None, type=int, help="Epochs per task (train.epochs).")
@click.option("--max-tasks", default=None, type=int, help="Only the first N tasks of the sequence.")
@click.option("--train-samples", default=None, type=int, help="Train on a seeded subset of N images per task.")
@click.option("--eval-samples", default=None, type=int, help="Attack a fixed seeded subset of N test images per task.")
@registry_option("--attacks", registry="attack", default=None,
                 help="Comma-separated evaluation attacks: {names}; N = steps, e.g. pgd10; worst is always "
                      "added (default: {default}).")
@click.option("--data-root", default=None, help="Dataset folder (default $CMAT_DATA or ./data).")
@click.option("--download", is_flag=True, help="Download missing datasets (torchvision, md5-checked).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--set", "set_", multiple=True, help="Override any config key: --set train.lr=0.05")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@launch_flags
def bench(methods, out, seeds, config_file, no_progress, **flags):
    """Run several methods with one configuration, harness and seeds; tabulate them."""
    from cmat import config as config_mod
    from cmat.bench import run_bench

    launch_opts = launch_options(flags, config_file)

    names = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CmatError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    cfg = config_mod.resolve(flags.get("tasks"), config_file, overrides(**flags))
    table = run_bench(cfg, names, seed_list, out, progress=not no_progress, launch_opts=launch_opts)
    if launch_opts.dry_run:
        click.echo(f"dry run: {len(table['pending'])} job(s) would be submitted; nothing was")
        return
    if table.get("pending"):
        click.echo(f"{len(table['pending'])} SLURM job(s) queued or running ({', '.join(table['pending'])}); "
                   "run the same command again to collect them")
        return
    click.echo(table["markdown"])
    click.echo(f"wrote {out}/bench.csv, bench.md")
