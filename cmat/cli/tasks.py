"""``cmat tasks [show NAME]``: the task sequences and their presets."""
from __future__ import annotations

import json

import click

from cmat.errors import CmatError


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def tasks(ctx, as_json):
    """List the task sequences (`cmat tasks show NAME` for one)."""
    if ctx.invoked_subcommand is not None:
        return
    from cmat.tasks import list_sequences

    seqs = list_sequences()
    if as_json:
        click.echo(json.dumps(seqs, indent=1))
        return
    for s in seqs:
        click.echo(f"{s['name']:<18} {s['num_tasks']:>3} tasks  {s['description']}")


@tasks.command("show")
@click.argument("name")
@click.option("--data-root", default=None, help="Where to look for the data (default: $CMAT_DATA, else ./data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks_show(name, data_root, as_json):
    """Show one sequence: its tasks, classes, files, and whether its data is present and verified."""
    from cmat.tasks import list_sequences, resolve_data_root
    from cmat.tasks.fetch import data_report

    found = [s for s in list_sequences() if s["name"] == name]
    if not found:
        names = ", ".join(s["name"] for s in list_sequences())
        raise CmatError(f"unknown task sequence {name!r} (valid: {names})")
    info = found[0]
    root = resolve_data_root(data_root)
    info["data_root"] = str(root)
    info["data"], info["file_status"] = data_report(root, info["files"], info["offline"])
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for k, v in info.items():
        click.echo(f"{k}: {v}")


@click.command(short_help="List the methods and their options, built-in and plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def methods(as_json):
    """List the methods (built-in and plugins, entry point group cmat.methods), one line each,
    then their options (set with --set method_options.KEY=VALUE): default, accepted values, help."""
    import json

    from cmat.catalog import describe_methods

    rows = describe_methods()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)
    src = max(len(r["source"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['source']:<{src}}  {r['summary']}")
        for key, o in r["options"].items():
            default = "none" if o["default"] is None else o["default"]
            click.echo(f"    {key} = {default}  ({o['accepts']})  {o['help']}")


@click.command(short_help="List the training objectives and what each declares.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def objectives(as_json):
    """List the training objectives (--objective): one line each, tagged ``certified`` (trains for
    certificates; the preset's certified recipe applies) and ``ddp`` (torchrun can wrap it)."""
    import json

    from cmat.objectives import OBJECTIVES

    rows = [{"name": n, "summary": ((c.__doc__ or "").strip().splitlines() or [""])[0], "certified": c.certified,
             "supports_ddp": c.supports_ddp} for n, c in OBJECTIVES.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        tags = ", ".join(t for t, on in (("certified", r["certified"]), ("ddp", r["supports_ddp"])) if on)
        click.echo(f"{r['name']:<{width}}  {r['summary']}" + (f"  [{tags}]" if tags else ""))


@click.command(short_help="List the evaluation attack names and their cost.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def attacks(as_json):
    """List the evaluation names --attacks takes (N = steps, R = restarts): what each does and its
    forward+backward passes per attacked image for a 10-class head at N = 10, R = 5 (the cost
    estimate's; AutoAttack's is an upper bound)."""
    import json

    from cmat.attacks.factory import FORMS, attack_passes

    rows = [{"name": name, "help": f.help, "passes_10_classes": attack_passes(name.replace("N", "10").replace(
        "R", "5"), 10)} for f in FORMS for name in f.example.split(", ")]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        cost = "" if not r["passes_10_classes"] else f"  [{r['passes_10_classes']:.0f} passes per image]"
        click.echo(f"{r['name']:<{width}}  {r['help']}{cost}")
