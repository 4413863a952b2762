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
    mapping = {"tasks": ("tasks",), "max_tasks": ("max_tasks",), "train_samples": ("train", "samples"), "method": ("method",), "seed": ("seed",), "objective": ("objective", "name"),
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
