"""What the main job costs: CMAT against one individual model, cost over 20 tasks, CPU bf16.

    python scripts/bench_cost.py --out runs/cost --json            # every part, one JSON object
    python scripts/bench_cost.py --out runs/cost --only rehearsal  # one part
    python scripts/bench_cost.py --out runs/cost --quick           # toy-sized smoke run (minutes)

Parts run at different times merge into ``OUT/bench_cost.json``; ``OUT/bench_cost.md`` is its
table with the goals of issue [12] (what docs/benchmarks.md includes).

Every part drives the ``cmat`` command line a user runs, into ``OUT/<part>/``, and reads the
numbers back from the result files (finished runs are reused, like ``cmat bench``):

``compute``: ``cmat bench --tasks digits-5split --methods at-individual,cmat --seeds 0,1`` (the
bench trains at-individual first and CMAT reads its goals from it); ratios are per seed and
their mean is the headline.
``cmat_vs_individual_compute`` = CMAT's training forward+backward passes (attack steps
included, ``cost.grad_evals``) / at-individual's; ``cmat_vs_individual_seconds`` the same for
training seconds; ``cmat_minus_individual_worst`` = CMAT's average worst-case robust accuracy
(correct under every attack, per image) − at-individual's.

``rehearsal``: the paper job's shape -- ``cifar100-20split`` (VGG16-BN, full width, PGD-7, the
CMAT schedule with growth and 5 compaction levels) through all 20 tasks, on format-exact
synthetic CIFAR-100 files, ``--train-samples`` images per task and one epoch per phase; the
evaluation runs ``clean, fgsm, pgd10, pgd40`` (AutoAttack's cost depends on how many images
the model keeps robust, a property of the model, not of the task count). From
``results.json → cost.per_task``: ``task_cost_growth`` = training seconds per step of task 20 /
task 1, ``eval_cost_growth`` = evaluation seconds after task 20 / after task 1 (both in process
CPU time, which a machine shared with other jobs does not inflate; ``*_wall`` the same in wall
seconds), ``rss_growth``
= peak RSS after task 20 / after task 1, and the store bytes per task (``rehearsal.csv``,
``rehearsal.png``).

``bf16``: the digits CMAT runs (goals from the ``compute`` part's at-individual, every seed) in
float32 and with ``accel.bf16=on``: ``bf16_speedup`` = float32 / bf16 process CPU seconds per
training pass (CMAT's decisions, hence its passes, may differ between the two; wall seconds of
the whole training in ``speedup_wall``), ``bf16_worst_delta`` = bf16 worst-case robust accuracy − float32's
(means over seeds; ``bf16_paired``: the paired test with the test image as the unit,
:func:`cmat.metrics.paired_image_test`); ``bf16_auto_picks`` = what ``accel.bf16=auto`` chooses on this
machine for that configuration.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: tests.fakedata writes the synthetic CIFAR-100


def cmat(*args: str, quiet: bool = False) -> None:
    """Run ``python -m cmat ARGS`` (the user's command line); a failure stops the benchmark."""
    cmd = [sys.executable, "-m", "cmat", *args]
    print("$ cmat " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else sys.stderr, stderr=sys.stderr)
    if done.returncode:
        raise SystemExit(f"bench_cost: `cmat {' '.join(args)}` failed with exit status {done.returncode}")


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def cpu_per_pass(res: dict) -> float:
    """Process CPU seconds per training pass (validation excluded), from ``cost.per_task``."""
    return sum(c["step_cpu_seconds"] * c["steps"] for c in res["cost"]["per_task"]) / res["cost"]["grad_evals"]


def worst(res: dict) -> float:
    return float(res["summary"]["worst"]["acc"])


# ----- compute ------------------------------------------------------------------------------
def part_compute(args) -> dict:
    out = args.out / "compute"
    tasks = "toy-2task" if args.quick else "digits-5split"
    extra = ["--epochs", "2"] if args.quick else []
    seeds = args.seeds
    cmat("bench", "--tasks", tasks, "--methods", "at-individual,cmat", "--seeds", ",".join(map(str, seeds)),
         "--out", str(out), *extra, *args.progress)
    per_seed = {}
    for seed in seeds:
        ind, cm = results(out / f"at-individual-s{seed}"), results(out / f"cmat-s{seed}")
        per_seed[seed] = {
            "compute": cm["cost"]["grad_evals"] / ind["cost"]["grad_evals"],
            "seconds": cm["cost"]["train_seconds"] / ind["cost"]["train_seconds"],
            "worst_delta": worst(cm) - worst(ind), "cmat_worst": worst(cm), "individual_worst": worst(ind),
            "cmat_grad_evals": cm["cost"]["grad_evals"], "individual_grad_evals": ind["cost"]["grad_evals"],
            "cmat_final_width": cm["decisions"]["tasks"][-1]["width"]}
    mean = lambda key: sum(v[key] for v in per_seed.values()) / len(per_seed)  # noqa: E731
    bench = json.loads((out / "bench.json").read_text())
    return {"cmat_vs_individual_compute": mean("compute"), "cmat_vs_individual_seconds": mean("seconds"),
            "cmat_minus_individual_worst": mean("worst_delta"),
            "compute_seeds": seeds, "compute_per_seed": per_seed, "compute_paired": bench["paired_tests"]["per_method"]}


# ----- rehearsal ----------------------------------------------------------------------------
def part_rehearsal(args) -> dict:
    from tests.fakedata import write_cifar100

    out = args.out / "rehearsal"
    data = out / "data"
    if not (data / "cifar-100-python" / "meta").exists():
        # 20 training and 4 test images per fine class: 100 / 20 per task, before --train-samples
        write_cifar100(data, per_class_train=20, per_class_test=4, seed=0)
    run = out / "run"
    n_tasks = 3 if args.quick else 20
    if not (run / "results.json").exists():
        cmat("run", "--tasks", "cifar100-20split", "--data-root", str(data), "--max-tasks", str(n_tasks),
             "--train-samples", str(args.train_samples), "--epochs", "1", "--attacks", "clean,fgsm,pgd10,pgd40",
             "--set", f"threads={args.threads}", "--out", str(run), *args.progress)
    per_task = results(run)["cost"]["per_task"]
    keys = ("train_seconds", "steps", "step_seconds", "step_cpu_seconds", "val_seconds", "grad_evals", "eval_seconds",
            "eval_cpu_seconds", "checkpoint_seconds", "peak_rss_mb", "store_bytes")
    with open(out / "rehearsal.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", *keys])
        for t, c in enumerate(per_task):
            w.writerow([t + 1, *(c.get(k, "") for k in keys)])
    plot_rehearsal(per_task, out / "rehearsal.png")
    md = ["| task | steps | CPU s / step (wall) | validation s | evaluation CPU s (wall) | checkpoint s | "
          "peak RSS MiB | store MiB |", "|---|---|---|---|---|---|---|---|"]
    for t, c in enumerate(per_task):
        ck = f"{c['checkpoint_seconds']:.1f}" if "checkpoint_seconds" in c else "— (final store)"
        md.append(f"| {t + 1} | {c['steps']} | {c['step_cpu_seconds']:.2f} ({c['step_seconds']:.2f}) | "
                  f"{c['val_seconds']:.1f} | {c['eval_cpu_seconds']:.1f} ({c['eval_seconds']:.1f}) | "
                  f"{ck} | {c['peak_rss_mb']:.0f} | {c['store_bytes'] / 2 ** 20:.1f} |")
    (out / "rehearsal.md").write_text("\n".join(md) + "\n")
    first, last = per_task[0], per_task[-1]
    return {"task_cost_growth": last["step_cpu_seconds"] / first["step_cpu_seconds"],
            "eval_cost_growth": last["eval_cpu_seconds"] / first["eval_cpu_seconds"],
            "task_cost_growth_wall": last["step_seconds"] / first["step_seconds"],
            "eval_cost_growth_wall": last["eval_seconds"] / first["eval_seconds"],
            "rss_growth": last["peak_rss_mb"] / first["peak_rss_mb"],
            # from task 3 on the piggyback-mask training state (from task 2) is in every peak
            "rss_growth_after_task_3": last["peak_rss_mb"] / per_task[min(2, len(per_task) - 1)]["peak_rss_mb"],
            "rehearsal_tasks": len(per_task),
            "rehearsal_step_cpu_seconds": [round(c["step_cpu_seconds"], 3) for c in per_task],
            "rehearsal_eval_cpu_seconds": [round(c["eval_cpu_seconds"], 2) for c in per_task],
            "rehearsal_peak_rss_mb": [round(c["peak_rss_mb"], 1) for c in per_task],
            "rehearsal_store_mb": [round(c["store_bytes"] / 2 ** 20, 2) for c in per_task if "store_bytes" in c]}


def plot_rehearsal(per_task: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(range(1, len(per_task) + 1))
    series = [("training CPU s / step", "step_cpu_seconds", 1.0), ("evaluation CPU s / task", "eval_cpu_seconds", 1.0),
              ("peak RSS (MiB)", "peak_rss_mb", 1.0), ("store (MiB)", "store_bytes", 2.0 ** -20)]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for ax, (label, key, scale) in zip(axes, series):
        xs = [t for t, c in zip(tasks, per_task) if key in c]
        ax.plot(xs, [per_task[t - 1][key] * scale for t in xs], marker="o", color="#1f77b4")
        ax.set_xlabel("task")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle("cifar100-20split rehearsal (VGG16-BN, synthetic CIFAR-100): cost per task")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----- bf16 ---------------------------------------------------------------------------------
def part_bf16(args) -> dict:
    import numpy as np

    from cmat.metrics import paired_image_test
    from cmat.outcomes import read_outcomes

    base = args.out / "compute"
    if not all((base / f"at-individual-s{seed}" / "results.json").exists() for seed in args.seeds):
        part_compute(args)
    tasks = "toy-2task" if args.quick else "digits-5split"
    extra = ["--epochs", "2"] if args.quick else []
    per_seed, outcomes = {}, {"off": [], "on": []}
    for seed in args.seeds:
        runs = {}
        for mode in ("off", "on"):
            run = args.out / "bf16" / f"cmat-bf16-{mode}-s{seed}"
            if not (run / "results.json").exists():
                cmat("run", "--tasks", tasks, "--method", "cmat", "--seed", str(seed), "--out", str(run), *extra,
                     "--set", f"method_options.individual_run={base / f'at-individual-s{seed}'}",
                     "--set", f"accel.bf16={mode}", *args.progress)
            runs[mode] = results(run)
            outcomes[mode].append(np.concatenate(read_outcomes(run / "eval.h5")["correct"]["worst"]))
        fp32, bf16 = runs["off"], runs["on"]
        per_seed[seed] = {"speedup": cpu_per_pass(fp32) / cpu_per_pass(bf16),
                          "speedup_wall": fp32["cost"]["train_seconds"] / bf16["cost"]["train_seconds"],
                          "worst_delta": worst(bf16) - worst(fp32), "bf16_worst": worst(bf16),
                          "fp32_worst": worst(fp32)}
    import torch

    from cmat import config, estimate
    from cmat.engine import resolve_device
    from cmat.tasks import tasks_for_config

    cfg = config.resolve(tasks, overrides={"accel": {"bf16": "auto"}, "method": "cmat"})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # as the run does
    choice = estimate.resolve_bf16(cfg, tasks_for_config(cfg)[0], resolve_device("cpu"), masked=True)
    mean = lambda key: sum(v[key] for v in per_seed.values()) / len(per_seed)  # noqa: E731
    # the same whole test sets in every seed: image i is position i; both seeds of an image count once
    test = paired_image_test({i: [(bool(off[i]), bool(on[i])) for off, on in zip(outcomes["off"], outcomes["on"])]
                              for i in range(len(outcomes["off"][0]))})
    return {"bf16_speedup": mean("speedup"), "bf16_worst_delta": mean("worst_delta"), "bf16_per_seed": per_seed,
            "bf16_paired": {**test, "a": "float32", "b": "bf16"},
            "bf16_auto_picks": "bf16" if choice["bf16"] else "float32", "bf16_auto_measured": choice}


PARTS = {"compute": part_compute, "rehearsal": part_rehearsal, "bf16": part_bf16}
GOALS = {"cmat_vs_individual_compute": ("≤", 1.5), "cmat_minus_individual_worst": ("≥", -0.01),
         "task_cost_growth": ("≤", 1.2), "eval_cost_growth": ("≤", 1.2), "rss_growth": ("≤", 1.2),
         "bf16_worst_delta": ("≥", -0.01)}
HEADLINE = ("cmat_vs_individual_compute", "cmat_vs_individual_seconds", "cmat_minus_individual_worst",
            "task_cost_growth", "eval_cost_growth", "rss_growth", "rss_growth_after_task_3", "bf16_speedup",
            "bf16_worst_delta", "bf16_auto_picks")


def to_markdown(res: dict) -> str:
    """The headline keys with their goals (issue [12]), as the table docs/benchmarks.md shows."""
    lines = ["| key | value | goal |", "|---|---|---|"]
    for key in HEADLINE:
        if key not in res:
            continue
        v = res[key]
        value = f"{v:+.4f}" if key.endswith(("_worst", "_delta")) else f"{v:.3f}" if isinstance(v, float) else str(v)
        goal = ""
        if key in GOALS:
            op, bound = GOALS[key]
            met = v <= bound if op == "≤" else v >= bound
            goal = f"{op} {bound:g}: {'met' if met else '**not met**'}"
        lines.append(f"| `{key}` | {value} | {goal} |")
    if "bf16_paired" in res:
        t = res["bf16_paired"]
        lines += ["", f"bf16 against float32 on {t['n_images']} test images × {t['n_seeds']} seeds, the image as the "
                      f"unit: float32 better on {t['a_better']}, bf16 on {t['b_better']}, sign test p = {t['p']:.3g}, "
                      f"float32 − bf16 = {t['mean_diff']:+.4f} [{t['ci95_diff'][0]:+.4f}, {t['ci95_diff'][1]:+.4f}] "
                      "(bootstrap over images); per seed: "
                      + ", ".join(f"s{k} speedup {v['speedup']:.2f}, Δworst {v['worst_delta']:+.4f}"
                                  for k, v in res["bf16_per_seed"].items())]
    if "compute_paired" in res and "at-individual" in res["compute_paired"]:
        t = res["compute_paired"]["at-individual"]["images"]
        lines += ["", f"CMAT against at-individual on {t['n_images']} test images × {t['n_seeds']} seeds "
                      f"(`worst`), the image as the unit: CMAT better on {t['a_better']}, "
                      f"at-individual on {t['b_better']}, sign test "
                      f"p = {t['p']:.3g}, CMAT − at-individual = {t['mean_diff']:+.4f} "
                      f"[{t['ci95_diff'][0]:+.4f}, {t['ci95_diff'][1]:+.4f}]."]
    if "compute_per_seed" in res:
        lines += ["", "| seed | CMAT / at-individual passes | seconds | "
                      "worst: CMAT − at-individual (CMAT, at-individual) | CMAT final width |",
                  "|---|---|---|---|---|"]
        for seed, v in res["compute_per_seed"].items():
            lines.append(f"| {seed} | {v['compute']:.3f} ({v['cmat_grad_evals']:,} / {v['individual_grad_evals']:,}) | "
                         f"{v['seconds']:.2f} | {v['worst_delta']:+.4f} "
                         f"({v['cmat_worst']:.4f}, {v['individual_worst']:.4f}) | {v['cmat_final_width']:g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-cost"))
    p.add_argument("--only", choices=sorted(PARTS), action="append", help="run only these parts (repeatable)")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1],
                   help="compute part: comma-separated seeds (default 0,1); bf16 uses the first")
    p.add_argument("--train-samples", type=int, default=32, help="rehearsal: training images per task")
    p.add_argument("--threads", type=int, default=1, help="rehearsal: torch threads")
    p.add_argument("--quick", action="store_true", help="toy-sized smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=["--no-progress"], default=[])
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    merged_path = args.out / "bench_cost.json"  # parts run at different times merge into one file
    merged = json.loads(merged_path.read_text()) if merged_path.exists() else {}
    out = {}
    for name in args.only or list(PARTS):
        out.update(PARTS[name](args))
    merged.update(json.loads(json.dumps(out)))  # JSON keys (seeds) as strings, like the file's
    merged_path.write_text(json.dumps(merged, indent=1))
    (args.out / "bench_cost.md").write_text(to_markdown(merged))
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
