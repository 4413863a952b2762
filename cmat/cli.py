"""The ``cmat`` command line (click). User-caused errors are one line on stderr, exit code 1."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

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


@click.group(cls=CmatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cmat")
def main():
    """Adversarially robust continual learning: CMAT (CPG + adversarial training) and baselines."""
    from cmat.memory import fix_mmap_threshold

    fix_mmap_threshold()  # memory flat over long task sequences (cmat/memory.py); CMAT_MALLOC_TUNING=0 skips


def _overrides(**flags) -> dict:
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


@main.command()
@click.option("--tasks", default=None, help="Task sequence (see `cmat tasks`); default digits-5split.")
@click.option("--method", default=None, help="Method: at-finetune, at-individual, ...")
@click.option("--objective", default=None, help="standard, pgd, trades, fast or free.")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--seed", default=None, type=int)
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="YAML file over the preset.")
@click.option("--epochs", default=None, type=int, help="Epochs per task (train.epochs).")
@click.option("--max-tasks", default=None, type=int, help="Only the first N tasks of the sequence (rehearsals).")
@click.option("--train-samples", default=None, type=int, help="Train on a seeded subset of N images per task.")
@click.option("--eval-samples", default=None, type=int, help="Attack a fixed seeded subset of N test images per task.")
@click.option("--attacks", default=None, help="Comma-separated: clean,fgsm,pgd10,pgd40,apgd-ce,apgd-t,...")
@click.option("--eps", default=None, help="Threat ε in [0,1] pixel units (e.g. 8/255).")
@click.option("--alpha", default=None, help="Attack step α in pixel units.")
@click.option("--batch-size", default=None, type=int)
@click.option("--arch", default=None, help="smallcnn, vgg16 or resnet18.")
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
    from cmat.distributed import is_main_process
    from cmat.engine import Run
    from cmat.rundir import RunLock, staging_dir, swap_in

    if resume and force:
        raise CmatError("--resume and --force contradict each other: --resume continues the run in --out, "
                        "--force replaces it")
    cfg = config_mod.resolve(flags.get("tasks"), config_file, _overrides(**flags))
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


@main.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--attacks", default=None, help="Comma-separated attack names (default: the run's).")
@click.option("--samples", default=None, type=int, help="Attack a fixed seeded subset of N test images.")
@click.option("--data-root", default=None)
@click.option("--device", default="auto")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_cmd(run_dir, attacks, samples, data_root, device, as_json):
    """Evaluate a trained run's tasks under attacks (reads store.h5)."""
    import cmat
    from cmat.engine import resolve_device
    from cmat.evaluate import WORST, attack_params, build_attacks, evaluate_task
    from cmat.metrics import wilson_interval
    from tasks import tasks_for_config

    loaded = cmat.load(run_dir)
    cfg = loaded.config
    requested = [a.strip() for a in attacks.split(",")] if attacks else list(cfg.eval.attacks)
    names = list(build_attacks(requested, cfg.threat.eps, cfg.threat.alpha, alphas=cfg.eval.alphas))  # validate first
    seq = tasks_for_config(cfg, data_root, download=False)
    dev = resolve_device(device)
    samples = samples if samples is not None else cfg.eval.samples
    per_task = []
    for j in range(len(loaded.task_names)):
        atks = build_attacks(names, cfg.threat.eps, cfg.threat.alpha, seq[j].num_classes, alphas=cfg.eval.alphas)
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
              "attacks": attack_params(build_attacks(names, cfg.threat.eps, cfg.threat.alpha, alphas=cfg.eval.alphas)),
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


@main.command()
@click.argument("run_dir", type=click.Path())
def inspect(run_dir):
    """Summarise a run's store: tasks, networks, parameters, bytes per part."""
    from cmat.report import inspect_store

    click.echo(inspect_store(run_dir))


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--samples", default=None, type=int,
              help="Test images per task for the ε/steps sweeps (default: the run's eval.samples; capped at it).")
@click.option("--data-root", default=None)
def plot(run_dir, samples, data_root):
    """Plot a run or bench directory: heat maps, per-task bars, accuracy over ε and steps."""
    from cmat.report import plot_run

    for path in plot_run(run_dir, samples, data_root):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--markdown", "as_markdown", is_flag=True, help="Markdown (the default output; kept for scripts).")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Also write the tables to this file.")
def report(run_dir, as_markdown, out):
    """Render the results tables of a run or bench directory from its result files (the tables
    in README/docs are made with this command, never typed)."""
    from cmat.report import render_report

    text = render_report(run_dir)
    if out:
        Path(out).write_text(text, encoding="utf-8")
    click.echo(text, nl=False)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def tasks(ctx, as_json):
    """List the task sequences (`cmat tasks show NAME` for one)."""
    if ctx.invoked_subcommand is not None:
        return
    from tasks import list_sequences

    seqs = list_sequences()
    if as_json:
        click.echo(json.dumps(seqs, indent=1))
        return
    for s in seqs:
        click.echo(f"{s['name']:<18} {s['num_tasks']:>3} tasks  {s['description']}")


@tasks.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks_show(name, as_json):
    """Show one sequence: its tasks, classes, files and preset."""
    from tasks import list_sequences

    found = [s for s in list_sequences() if s["name"] == name]
    if not found:
        names = ", ".join(s["name"] for s in list_sequences())
        raise CmatError(f"unknown task sequence {name!r} (valid: {names})")
    info = found[0]
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for k, v in info.items():
        click.echo(f"{k}: {v}")


@main.command()
@click.option("--tasks", default=None, help="Task sequence (default digits-5split).")
@click.option("--methods", default="cmat,packnet,anp-vs,at-finetune,at-individual", show_default=True,
              help="Comma-separated method names.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Bench directory.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--objective", default=None)
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False))
@click.option("--epochs", default=None, type=int)
@click.option("--max-tasks", default=None, type=int, help="Only the first N tasks of the sequence.")
@click.option("--train-samples", default=None, type=int, help="Train on a seeded subset of N images per task.")
@click.option("--eval-samples", default=None, type=int)
@click.option("--attacks", default=None)
@click.option("--data-root", default=None)
@click.option("--download", is_flag=True)
@click.option("--device", default=None)
@click.option("--set", "set_", multiple=True, help="Override any config key: --set train.lr=0.05")
@click.option("--no-progress", is_flag=True)
def bench(methods, out, seeds, config_file, no_progress, **flags):
    """Run several methods with one configuration, harness and seeds; tabulate them."""
    from cmat import config as config_mod
    from cmat.bench import run_bench

    names = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CmatError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    cfg = config_mod.resolve(flags.get("tasks"), config_file, _overrides(**flags))
    table = run_bench(cfg, names, seed_list, out, progress=not no_progress)
    click.echo(table["markdown"])
    click.echo(f"wrote {out}/bench.csv, bench.md")


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--task", "task", default=0, show_default=True, type=int, help="Task index j.")
@click.option("--n", "n", default=100, show_default=True, type=int, help="First N test images of the task.")
@click.option("--bound", default="crown", show_default=True,
              type=click.Choice(["ibp", "crown", "alpha-crown", "milp"]),
              help="ibp, crown, alpha-crown (optimised slopes) or milp (exact, small networks, per-sample time limit).")
@click.option("--eps-max", default=None, type=float, help="Bisection range [0, eps-max] (default 4× the run's ε).")
@click.option("--iters", default=12, show_default=True, type=int, help="Bisection steps.")
@click.option("--max-neurons", default=512, show_default=True, type=int,
              help="crown/alpha-crown: layers with more unstable neurons keep IBP bounds (faster, looser); "
                   "0 refines every layer (memory is chunked; time grows with the layer width).")
@click.option("--time-limit", default=10.0, show_default=True, type=float,
              help="milp: seconds per sample and ε; an unfinished check counts as not certified (unknown).")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Output folder (RUN_DIR/verify).")
@click.option("--data-root", default=None)
@click.option("--json", "as_json", is_flag=True)
def verify(run_dir, task, n, bound, eps_max, iters, max_neurons, time_limit, out, data_root, as_json):
    """Per-sample critical ε: certified lower end (IBP/CROWN) and PGD upper end; CSV + ECDF."""
    from cmat.verify import verify_run

    if n < 1:
        raise CmatError(f"--n must be ≥ 1, got {n}")
    if time_limit <= 0:
        raise CmatError(f"--time-limit must be > 0, got {time_limit}")
    if max_neurons < 0:
        raise CmatError(f"--max-neurons must be ≥ 0 (0: no limit), got {max_neurons}")
    summary = verify_run(run_dir, task, n, bound, eps_max, out, data_root, iters, time_limit=time_limit,
                         max_neurons=max_neurons or None)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for k, v in summary.items():
        click.echo(f"{k}: {v}")


@main.command()
@click.option("--source", "source", required=True, type=click.Path(), help="Run directory of the robust source.")
@click.option("--source-task", default=0, show_default=True, type=int)
@click.option("--tasks", "target", required=True, help="Target task sequence.")
@click.option("--task", "target_task", default=0, show_default=True, type=int, help="Target task index.")
@click.option("--strategies", default="linear,tl-1,finetune,lwf,scratch", show_default=True)
@click.option("--objectives", default="standard,pgd", show_default=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=None, type=int)
@click.option("--eval-samples", default=None, type=int)
@click.option("--attacks", default="clean,pgd10,pgd40", show_default=True)
@click.option("--data-root", default=None)
@click.option("--download", is_flag=True)
@click.option("--device", default=None)
@click.option("--set", "set_", multiple=True, help="e.g. --set method_options.lwf_lambda=0.5")
@click.option("--no-progress", is_flag=True)
def transfer(source, source_task, target, target_task, strategies, objectives, out, no_progress, **flags):
    """Adapt a robust source to a target task: linear, tl-K, finetune, lwf vs scratch."""
    from cmat.transfer import run_transfer

    flags["tasks"] = target
    report = run_transfer(source, source_task, target, target_task,
                          [s.strip() for s in strategies.split(",") if s.strip()],
                          [o.strip() for o in objectives.split(",") if o.strip()], out, _overrides(**flags),
                          progress=not no_progress)
    click.echo(report["markdown"])
    click.echo(f"wrote {out}/transfer.json, transfer.csv, transfer.md, transfer.png")


@main.command("transfer-study")
@click.option("--tasks", required=True, help="Sequence holding source and target task, e.g. digits-2split.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Study directory.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="YAML file over the preset.")
@click.option("--source-task", default=0, show_default=True, type=int, help="Source task index.")
@click.option("--target-task", default=1, show_default=True, type=int, help="Target task index.")
@click.option("--strategies", default=None,
              help="Comma-separated transfer strategies (default linear,tl-K,finetune,lwf; scratch is always run).")
@click.option("--jobs", default=None, type=int, help="Worker processes (default: CPU cores on a CPU, 1 on a GPU).")
@click.option("--verify-samples", default=30, show_default=True, type=int,
              help="Correct test images per cell whose critical ε is bracketed (ECDF).")
@click.option("--seed", default=None, type=int)
@click.option("--epochs", default=None, type=int)
@click.option("--eval-samples", default=None, type=int)
@click.option("--attacks", default=None)
@click.option("--data-root", default=None)
@click.option("--download", is_flag=True)
@click.option("--device", default=None)
@click.option("--set", "set_", multiple=True, help="e.g. --set method_options.lwf_lambda=0.5")
@click.option("--no-progress", is_flag=True)
def transfer_study(out, config_file, source_task, target_task, strategies, jobs, verify_samples, no_progress, **flags):
    """The robustness-transfer study in one command: standard and PGD sources, every strategy ×
    target objective plus scratch; attacks, certification, cost; study.csv/md and plots."""
    import os

    from cmat import config as config_mod
    from cmat.engine import resolve_device
    from cmat.transfer_study import run_study

    cfg = config_mod.resolve(flags.get("tasks"), config_file, _overrides(**flags))
    if jobs is None:
        jobs = 1 if resolve_device(cfg.device).type == "cuda" else max(1, min(os.cpu_count() or 1, 8))
    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    study = run_study(cfg, out, source_task, target_task, names, jobs, verify_samples, progress=not no_progress,
                      say=lambda m: click.echo(m, err=False))
    from cmat.transfer_study import study_markdown

    click.echo(study_markdown(study))
    click.echo(f"wrote {out}/study.csv, study.md, study.json, critical_eps.csv, pareto.png, bars.png, ecdf.png")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
