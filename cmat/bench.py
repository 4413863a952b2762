"""``cmat bench``: several methods, one configuration, one harness, the same seeds.

Each (method, seed) runs into ``OUT/<method>-s<seed>/`` (a finished run with the same
configuration is reused; when ``at-individual`` is in the list it runs first and CMAT reads its
individual-model goals from it, ``method_options.individual_run``, instead of training them a
second time; a finished CMAT run is reused only while the at-individual run it read is unchanged,
:func:`cmat.cpg.goals_current`), then ``bench.csv`` (one row per method), ``bench.md`` (mean ± sample std
over seeds, the run budget, and paired tests of every method against the reference method —
``cmat`` when it is in the list — on the per-image ``worst`` outcomes, the test image as the
unit and seeds as repeated measures: one crossed bootstrap over images and seeds gives the p-value
and the 95% CI, with exact McNemar tests per seed beside it) and ``bench.json`` are written and the table
is returned for printing. Every method name is checked before anything trains.
"""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np

from cmat import config as config_mod
from cmat.atomic import atomic_write_text
from cmat.attacks.factory import attack_label, check_attack_name, column_rank
from cmat.catalog import check_option_keys, method_class
from cmat.cpg import goals_current
from cmat.launch import LaunchOptions, launch, refuse_live_slurm_jobs, run_job_for
from cmat.provenance import machine_line
from cmat.errors import CmatError
from cmat.metrics import IMAGE_TEST, mcnemar_exact, paired_image_test, seed_spread
from cmat.outcomes import read_outcomes, worst_over
from cmat.rundir import RunLock, lock_runs, read_results
from cmat.tasks import tasks_for_config



def reference_method(methods) -> str:
    """The method every other is compared with: CMAT when the bench has it, else the first."""
    return "cmat" if "cmat" in methods else methods[0]


def table_columns(runs) -> list:
    """The columns every run's summary has that are evaluation names (or ``worst``), in table
    order (:func:`cmat.attacks.factory.column_rank`)."""
    common = set.intersection(*(set(r["summary"]) for r in runs)) if runs else set()
    return sorted((c for c in common if c == "worst" or _is_attack(c)), key=column_rank)


def _is_attack(name: str) -> bool:
    try:
        check_attack_name(name)
        return True
    except CmatError:
        return False

ALPHA = 0.05  # significance level of the paired tests


def reusable_run(run_dir: Path, cfg, say=None) -> bool:
    """Whether ``run_dir`` holds a finished run (results.json, config.yaml, eval.h5) of exactly
    the configuration ``cfg`` — then a bench or study reuses it instead of training again. A key
    the stored config.yaml lacks (added to cmat later) counts as its default, which is what
    the run did: a new option must not make every finished run look foreign. A results.json or
    eval.h5 that cannot be read (truncated, garbage, another schema) makes it not reusable:
    ``say`` gets one line and the run trains again; nothing is built from the bad file."""
    if not all((run_dir / f).exists() for f in ("results.json", "config.yaml", "eval.h5")):
        return False
    if not config_mod.stored_config_matches((run_dir / "config.yaml").read_text(errors="replace"),
                                            config_mod.to_yaml(cfg)):
        return False
    try:
        read_results(run_dir)
        read_outcomes(run_dir / "eval.h5")
    except CmatError as err:
        if say is not None:
            say(f"{err}; running {run_dir.name} again")
        return False
    return True


def run_bench(base_cfg, methods, seeds, out, progress=True, verbose=True, launch_opts=None) -> dict:
    """Run (or reuse) every method × seed where ``launch_opts`` says (default: in this process,
    one after another); write and return the aggregated table. Returns ``{"pending": [...]}``
    without a table when SLURM jobs were submitted and not waited for (``--no-wait``)."""
    opts = launch_opts or LaunchOptions()
    opts.check()
    if not methods:
        raise CmatError("--methods is empty")
    for m in methods:
        method_class(m)  # unknown names fail here, before any training
    _check_options(base_cfg, methods)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    local = opts.launcher == "local"
    with RunLock(out, "cmat bench"), \
            lock_runs([out / f"{m}-s{s}" for m in methods for s in seeds] if local else [], "cmat bench"):
        if local:  # its workers write the runs this bench holds; SLURM jobs hold their own
            refuse_live_slurm_jobs(out, "local bench")
        jobs, reused = bench_jobs(base_cfg, methods, seeds, out, say=print if verbose else None)
        for name, label in reused:
            if verbose:
                print(f"[{label}] reusing the finished run in {out / name}")
        states = launch(jobs, out, opts, f"cmat bench {out}", progress=progress, verbose=verbose) if jobs else {}
        if opts.dry_run:
            return {"pending": sorted(states), "markdown": ""}
        failed = sorted(n for n, s in states.items() if s in ("failed", "skipped"))
        if failed:
            raise CmatError(f"{len(failed)} run(s) did not finish: {', '.join(failed)} (each run's log: "
                            f"{out}/<run>/run.log); the same command reruns them and reuses the rest")
        pending = sorted(n for n, s in states.items() if s != "done")
        if pending:
            return {"pending": pending, "markdown": ""}
        per_method = {m: [read_results(out / f"{m}-s{seed}") for seed in seeds] for m in methods}
        return write_bench(out, base_cfg, methods, seeds, per_method)


def bench_jobs(base_cfg, methods, seeds, out: Path, say=None) -> tuple:
    """``(jobs, reused)``: a run job (:func:`cmat.launch.run_job_for`) per (method, seed) whose
    run directory does not hold a finished run of its configuration, in dependency order
    (``at-individual`` first: CMAT reads its goals from it), and ``(name, label)`` of the
    finished runs that are reused."""
    jobs, reused = [], []
    for m in sorted(methods, key=lambda name: name != "at-individual"):
        for seed in seeds:
            cfg = copy.deepcopy(base_cfg)
            cfg.method, cfg.seed = m, int(seed)
            deps = ()
            if m == "cmat" and "at-individual" in methods and _goal_from_individual(cfg):
                cfg.method_options = {**cfg.method_options, "individual_run": str(out / f"at-individual-s{seed}")}
                deps = (f"at-individual-s{seed}",)
            name = f"{m}-s{seed}"
            if reusable_run(out / name, cfg, say) and _goals_current(out / name, cfg, jobs):
                reused.append((name, f"{m} s{seed}"))
                continue
            jobs.append(run_job_for(name, out / name, config_mod.to_yaml(cfg), f"{m} s{seed}", deps))
    return jobs, reused


def write_bench(out: Path, base_cfg, methods, seeds, per_method: dict) -> dict:
    """bench.csv, bench.md and bench.json from the finished runs' results."""
    columns = table_columns([r for runs in per_method.values() for r in runs])
    rows = [aggregate(m, runs, columns) for m, runs in per_method.items()]
    reference = reference_method(methods)
    tests = paired_tests(out, methods, seeds, reference)
    budget = run_budget(base_cfg, per_method[methods[0]][0], seeds, methods,
                        runs=[r for runs in per_method.values() for r in runs])
    md = to_markdown(rows, columns, base_cfg, seeds, budget, reference, tests)
    atomic_write_text(out / "bench.csv", to_csv(rows, columns))
    atomic_write_text(out / "bench.md", md)
    atomic_write_text(out / "bench.json", json.dumps({"tasks": base_cfg.tasks, "seeds": list(seeds), "columns": columns,
                                                      "rows": rows, "budget": budget, "reference": reference,
                                                      "paired_tests": {"test": IMAGE_TEST, "column": "worst",
                                                                       "seeds": len(seeds), "per_method": tests}},
                                                     indent=1))
    return {"rows": rows, "markdown": md}


def _goals_current(run_dir: Path, cfg, jobs) -> bool:
    """A CMAT run reading its goals from an at-individual run is reusable only while that run
    is the one it read (recorded digest of its results.json, :func:`cmat.cpg.goals_current`) and
    is not itself about to rerun in this bench."""
    source = cfg.method_options.get("individual_run") if cfg.method == "cmat" else None
    if not source:
        return True
    return all(Path(j.run_dir) != Path(source) for j in jobs) and goals_current(run_dir, source)


def _goal_from_individual(cfg) -> bool:
    """Whether CMAT would train an individual model per task for its goal: in a bench that also
    runs at-individual (same configuration and seed) it reads those instead of paying twice."""
    opts = cfg.method_options
    return opts.get("goal", "individual") == "individual" and not opts.get("individual_run")


def _check_options(base_cfg, methods) -> None:
    """Build every method once (CPU, untrained) so an invalid ``method_options`` value fails with
    one line before the first method trains, not after it."""
    import torch

    check_option_keys(base_cfg.method_options)
    seq = tasks_for_config(base_cfg)
    for m in methods:
        cfg = copy.deepcopy(base_cfg)
        cfg.method = m
        method_class(m)(cfg, seq, torch.device("cpu"))


def aggregate(method: str, runs: list, columns) -> dict:
    """Mean and sample standard deviation (ddof 1) over seeds of the average accuracies; mean
    macro-F1, BWT, forgetting and cost."""
    row = {"method": method, "seeds": len(runs)}
    for name in columns:
        spread = seed_spread([r["summary"][name]["acc"] for r in runs])
        row[name] = spread["mean"]
        row[f"{name}_std"] = spread["std"]  # sample std (ddof 1) over seeds; None for one seed
        if len(runs) == 1 and "ci95" in runs[0]["summary"][name]:
            row[f"{name}_ci95"] = runs[0]["summary"][name]["ci95"]
    row["n_images"] = int(np.mean([r["summary"]["clean"].get("n", 0) for r in runs]))
    row["f1_clean"] = float(np.mean([np.mean(r["f1"]["clean"]) for r in runs]))
    row["f1_pgd10"] = float(np.mean([np.mean(r["f1"]["pgd10"]) for r in runs if "pgd10" in r["f1"]] or [np.nan]))
    robust = "worst" if "worst" in columns else "pgd10" if "pgd10" in columns else "clean"
    for key in ("bwt", "forgetting"):
        row[key] = float(np.mean([r["summary"]["clean"][key] for r in runs]))
        row[f"{key}_robust"] = float(np.mean([r["summary"][robust][key] for r in runs]))
    row["robust_column"] = robust
    row["params"] = int(np.mean([r["cost"]["params_total"] for r in runs]))
    row["store_bytes"] = int(np.mean([r["cost"]["store_bytes"] for r in runs]))
    row["train_seconds"] = float(np.mean([r["cost"]["train_seconds"] for r in runs]))
    passes = [r["cost"].get("grad_evals") for r in runs]
    row["train_passes"] = float(np.mean(passes)) if all(p is not None for p in passes) else None
    return row


def paired_tests(out: Path, methods, seeds, reference: str, column: str = "worst", files=("eval.h5",)) -> dict:
    """Each method against ``reference`` on the per-image ``column`` outcomes, the test image as
    the unit and seeds as repeated measures (:func:`cmat.metrics.paired_image_test`: a crossed
    bootstrap over images and seeds, p-value and CI of the accuracy difference from the same
    resamples), plus the exact
    McNemar test of every seed on its own. Within a seed both runs must have evaluated the same
    images (else an error); across seeds an image is counted once. With several ``files`` (e.g.
    ``("eval.h5", "eval-all.h5")``) an image counts as correct when it is in every one of them."""
    def bits(m, seed):
        return worst_over(out / f"{m}-s{seed}", files, column)

    results = {}
    ref = {s: bits(reference, s) for s in seeds}
    for m in methods:
        if m == reference:
            continue
        pairs, per_seed = {}, {}
        for s in seeds:
            idx, b = bits(m, s)
            ref_idx, a = ref[s]
            if len(idx) != len(ref_idx) or any(not np.array_equal(i, r) for i, r in zip(idx, ref_idx)):
                raise CmatError(f"{m} and {reference} (seed {s}) were evaluated on different images; cannot pair them")
            per_seed[str(s)] = mcnemar_exact(np.concatenate(a), np.concatenate(b))
            for task, (images, a_t, b_t) in enumerate(zip(idx, a, b)):
                for image, x, y in zip(np.asarray(images).tolist(), a_t, b_t):
                    pairs.setdefault((task, image), {})[s] = (bool(x), bool(y))
        results[m] = {"column": column, "images": paired_image_test(pairs), "per_seed": per_seed}
    return results


def _verdict(p: dict, per_seed: dict, reference: str) -> str:
    """The `significant` cell: the primary test's verdict (its p and its interval agree by
    construction, :func:`cmat.metrics.paired_image_test`; should they not, the cell says so), and
    a word when single seeds' McNemar tests point the other way."""
    lo, hi = p["ci95_diff"]
    significant = p["p"] < ALPHA
    if significant == (lo <= 0 <= hi):
        return (f"p {p['p']:.3g} but the 95% CI [{lo:+.4f}, {hi:+.4f}] "
                f"{'contains' if significant else 'excludes'} 0: undecided")
    text = (f"yes ({reference} better)" if p["mean_diff"] > 0 else "yes (method better)") if significant else "no"
    odd = [s for s, v in per_seed.items() if (v["p"] < ALPHA) != significant]
    if odd and len(per_seed) > 1:
        which = ", ".join(f"s{s}" for s in odd)
        text += (f"; seed {which} alone {'is' if not significant else 'is not'} significant by McNemar: the seeds "
                 "disagree, and the primary test weighs that spread")
    return text


def run_budget(cfg, results: dict, seeds, methods=(), runs=()) -> dict:
    """What the numbers were bought with, so a reduced-budget table cannot pass for a full one,
    and on which machines (``runs``' provenance: bit-exact reruns need the same CPU kind)."""
    ev = results.get("eval", {})
    return {"tasks": cfg.tasks, "objective": cfg.objective.name, "objective_steps": cfg.objective.steps,
            "epochs": cfg.train.epochs, "eval_samples": cfg.eval.samples, "images_per_task": ev.get("n"),
            "test_images_per_task": ev.get("n_test"), "attacks": results["attacks"], "seeds": list(seeds),
            "threat": {"eps": cfg.threat.eps, "alpha": cfg.threat.alpha}, "arch": cfg.model.arch,
            "method_options": cfg.method_options,
            "cmat_goals_from_individual": ("cmat" in methods and "at-individual" in methods
                                           and _goal_from_individual(cfg)),
            "machines": machine_line([r.get("provenance", {}) for r in runs]) if runs else None}


def to_csv(rows: list, columns) -> str:
    keys = ["method", *columns] + [k for k in rows[0] if k not in ("method", *columns)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in keys})
    return buf.getvalue()


def _attack_text(name: str, p: dict) -> str:
    if name == "clean":
        return None
    if name == "aa":
        return f"aa = AutoAttack ({', '.join(p.get('components', []))}; {p['steps']} steps, {p['n_queries']} queries)"
    alpha = "adaptive" if p.get("alpha") is None else f"{p['alpha']:.4g}"
    return f"{name}: ε {p['eps']:.4g}, α {alpha}, {p['steps']} steps"


def paired_markdown(tests: dict, reference: str, n_seeds: int, what: str = "`worst`") -> str:
    """The paired section: what the primary test is and ignores, then one row per method."""
    spread = (f"Each distinct image is one unit and its {n_seeds} seeds are repeated measures of it, so the "
              f"interval holds both the image-to-image and the seed-to-seed variation. It ignores: with "
              f"{n_seeds} seeds the seed draw has only {n_seeds ** n_seeds} outcomes, so the seed part of the "
              f"spread is coarse (and a bootstrap's is about {n_seeds - 1}/{n_seeds} of the true one); the "
              "crossed bootstrap counts the image × seed interaction twice (mildly conservative); "
              if n_seeds > 1 else
              "Each image is one unit. One seed: the interval holds the image-to-image variation only, not "
              "the seed-to-seed one (training randomness). It ignores: ")
    text = (f"\n## Paired comparison against {reference} on {what}, the test image as the unit\n\n"
            f"Primary test (`p (crossed bootstrap)`, `difference [95% CI]`): {IMAGE_TEST}. " + spread +
            f"no correction for comparing {len(tests)} methods against one reference. The difference is "
            f"{reference} minus the method, in accuracy. `{reference} better` / `method better` count images "
            f"kept (correct under every attack) in more seeds by one than the other (descriptive). Secondary: "
            f"the exact McNemar test of each seed on its own. Significant means p < {ALPHA} (two-sided).\n\n"
            f"| method | images | seeds | {reference} better | method better | p (crossed bootstrap) | "
            f"significant | difference [95% CI] | McNemar p per seed (secondary) |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    for m, t in tests.items():
        p = t["images"]
        verdict = _verdict(p, t["per_seed"], reference)
        seeds_p = ", ".join(f"s{s}: {v['p']:.3g}" for s, v in t["per_seed"].items())
        lo, hi = p["ci95_diff"]
        p_text = f"< {1 / p['bootstrap']:.0e}" if p["p"] == 0 else f"{p['p']:.3g}"  # none of B resamples crossed 0
        text += (f"| {m} | {p['n_images']} | {p['n_seeds']} | {p['a_better']} | {p['b_better']} | {p_text} "
                 f"| {verdict} | {p['mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {seeds_p} |\n")
    return text


def to_markdown(rows: list, columns, cfg, seeds, budget: dict, reference: str, tests: dict) -> str:
    n_img = budget.get("images_per_task") or []
    scope = (f"a seeded subset of {cfg.eval.samples} test images per task" if cfg.eval.samples is not None
             and n_img != budget.get("test_images_per_task") else "the whole test set of every task")
    spread_text = ("mean ± sample standard deviation (ddof 1) over the seeds' averages" if len(seeds) > 1
                   else "one seed: no spread over seeds; 95% intervals over images below")
    head = (f"# cmat bench: {cfg.tasks}, objective {cfg.objective.name}, ε = {cfg.threat.eps:.4g}, "
            f"seeds {','.join(map(str, seeds))}\n\n"
            f"Average accuracy over tasks after the last task ({spread_text}), every column on {scope}; "
            "`worst` = correct clean and under every attack run (per image). F1 = macro-F1 (clean); "
            f"BWT and forgetting on clean and on `{rows[0]['robust_column']}` accuracy.\n\n")
    cols = ["method"] + [attack_label(c) for c in columns] + ["F1", "BWT", "forgetting",
                                                               f"BWT ({rows[0]['robust_column']})", "params",
                                                               "store MB", "train s", "train passes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["method"]] + [f"{r[c]:.4f}" + ("" if r[c + "_std"] is None else f" ± {r[c + '_std']:.4f}")
                                 for c in columns]
        cells += [f"{r['f1_clean']:.4f}", f"{r['bwt']:+.4f}", f"{r['forgetting']:.4f}", f"{r['bwt_robust']:+.4f}",
                  f"{r['params']:,}", f"{r['store_bytes'] / 1e6:.2f}", f"{r['train_seconds']:.0f}",
                  "—" if r.get("train_passes") is None else f"{r['train_passes']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = head + "\n".join(lines) + "\n"
    if rows and all(f"{c}_ci95" in rows[0] for c in columns):
        text += (f"\nOne seed: 95% Wilson intervals pooled over the {rows[0]['n_images']} evaluated images "
                 "(a seed's spread is not in them):\n\n")
        text += ("| method | " + " | ".join(attack_label(c) for c in columns) + " |\n|"
                 + "---|" * (len(columns) + 1) + "\n")
        for r in rows:
            text += f"| {r['method']} | " + " | ".join(f"[{r[c + '_ci95'][0]:.3f}, {r[c + '_ci95'][1]:.3f}]"
                                                       for c in columns) + " |\n"
    if tests:
        text += paired_markdown(tests, reference, len(seeds))
    text += "\n## Run budget\n\n"
    text += (f"- tasks `{budget['tasks']}`, arch `{budget['arch']}`, objective `{budget['objective']}` "
             f"({budget['objective_steps']} attack steps), {budget['epochs']} "
             f"epoch{'s' if budget['epochs'] != 1 else ''} per task and phase\n"
             f"- threat ε = {budget['threat']['eps']:.4g}, training α = {budget['threat']['alpha']:.4g}\n"
             f"- evaluation images per task: {', '.join(map(str, n_img))} "
             f"(eval samples: {budget['eval_samples'] if budget['eval_samples'] is not None else 'all'})\n"
             f"- attacks: "
             + "; ".join(t for t in (_attack_text(n, p) for n, p in budget["attacks"].items()) if t) + "\n"
             f"- seeds: {', '.join(map(str, budget['seeds']))}\n"
             f"- method options: {json.dumps(budget['method_options']) if budget['method_options'] else 'defaults'}\n")
    if budget.get("machines"):
        text += f"- {budget['machines']}\n"
    if budget.get("cmat_goals_from_individual"):
        text += ("- cmat's goals (the individual model's robust validation accuracy per task) are read from the "
                 "at-individual run of the same seed (`method_options.individual_run`), not trained a second time; "
                 "`train passes` = training forward+backward passes, attack steps included\n")
    return text
