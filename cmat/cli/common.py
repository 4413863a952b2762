"""What every command shares: the error boundary and the flag → configuration mapping.

Commands import the library inside their functions, so ``cmat --help`` starts without
loading torch; the imports still point downwards only (the CLI is the top layer).
"""
from __future__ import annotations

import click

from cmat.errors import CmatError


class CmatGroup(click.Group):
    """Catches :class:`CmatError` at the CLI boundary: one line, non-zero exit, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CmatError as err:
            click.echo(f"cmat: error: {err}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("cmat: interrupted", err=True)
            ctx.exit(130)


def overrides(**flags) -> dict:
    """The configuration overrides a command's flags ask for (flag → config key; ``--set`` last)."""
    from cmat.config import deep_update, parse_set

    out: dict = {}
    mapping = {"tasks": ("tasks",), "max_tasks": ("max_tasks",), "train_samples": ("train", "samples"),
               "method": ("method",), "seed": ("seed",), "objective": ("objective", "name"),
               "epochs": ("train", "epochs"), "eval_samples": ("eval", "samples"), "attacks": ("eval", "attacks"),
               "data_root": ("data_root",), "device": ("device",), "eps": ("threat", "eps"),
               "alpha": ("threat", "alpha"), "batch_size": ("train", "batch_size"), "arch": ("model", "arch")}
    for key, path in mapping.items():
        value = flags.get(key)
        if value is None:
            continue
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    if flags.get("download"):
        out["download"] = True
    if flags.get("deterministic"):
        out["deterministic"] = True
    return deep_update(out, parse_set(flags.get("set_")))


LAUNCH_FLAGS = ("jobs", "launcher", "gpus_per_run", "partition", "time_min", "cpus_per_run", "mem_gb", "no_wait",
                "dry_run")


def launcher_flags(fn):
    """``--launcher`` and the SLURM flags (see docs/cluster.md)."""
    options = [
        click.option("--launcher", default="local", show_default=True, type=click.Choice(["local", "slurm"]),
                     help="local: this machine; slurm: one SLURM job per run through submitit."),
        click.option("--gpus-per-run", default=None, type=int,
                     help="GPUs per run (local: of the visible CUDA devices, default 1; slurm: default 0)."),
        click.option("--partition", default=None, help="SLURM partition."),
        click.option("--time", "time_min", default=None, type=int, help="SLURM time limit per run, minutes."),
        click.option("--cpus-per-run", default=None, type=int, help="SLURM CPUs per run."),
        click.option("--mem", "mem_gb", default=None, type=float, help="SLURM memory per run, GB."),
        click.option("--no-wait", is_flag=True, help="slurm: submit and return; the same command later collects."),
        click.option("--dry-run", is_flag=True, help="slurm: print the jobs, submit nothing."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def launch_flags(fn):
    """``cmat bench``'s ``--jobs`` and :func:`launcher_flags`."""
    return click.option("--jobs", default=1, show_default=True, type=int,
                        help="Runs at once on this machine, each in its own process with cores/N threads.")(
        launcher_flags(fn))


def launch_options(flags: dict, config_file):
    """Pop the launcher flags out of ``flags``: a :class:`cmat.launch.LaunchOptions` (SLURM
    resources from the ``slurm:`` block of ``config_file``, then the flags)."""
    from cmat.launch import LaunchOptions, SlurmOptions

    f = {k: flags.pop(k, None) for k in LAUNCH_FLAGS}
    slurm = SlurmOptions.from_file(config_file, partition=f["partition"], time_min=f["time_min"],
                                   cpus_per_run=f["cpus_per_run"], mem_gb=f["mem_gb"],
                                   gpus_per_run=f["gpus_per_run"])
    opts = LaunchOptions(launcher=f["launcher"] or "local", jobs=1 if f["jobs"] is None else f["jobs"],
                         gpus_per_run=f["gpus_per_run"] or 1, wait=not f["no_wait"], dry_run=bool(f["dry_run"]),
                         slurm=slurm)
    opts.check()
    return opts
