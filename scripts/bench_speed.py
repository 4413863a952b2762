"""Speed benchmarks for cmat's hot paths.

    python scripts/bench_speed.py                      # every benchmark, human-readable
    python scripts/bench_speed.py --only pgd --json    # one benchmark, one JSON object on stdout
    python scripts/bench_speed.py --quick              # tiny smoke run (seconds)

Each benchmark is a function ``(args) -> dict`` registered in ``BENCHMARKS``; its keys start
with the benchmark's name, so the results of several benchmarks merge into one flat JSON object.
Timings are wall-clock seconds per call: one warm-up call, then ``--repeats`` calls per variant,
interleaved across variants (so slow drifts in machine load hit every variant alike), reported as
the median (and the minimum, ``*_min_s``). ``loadavg`` records the 1-minute load average when the
run started: on a shared machine, wall-clock numbers taken under load are noisy; there,
``--threads 1 --clock cpu`` (process CPU time, which time spent descheduled does not inflate)
gives repeatable comparisons.

``pgd``: PGD-K (random start, ε = 8/255, α = 2/255) on one batch through a randomly initialised
MultiHeadNet in eval mode: cmat's :class:`cmat.attacks.PGD` (default: BN folded), the same with
``fold_bn=False``, and ``torchattacks.PGD`` on the same weights and inputs.
``pgd_vs_torchattacks`` = torchattacks time / cmat time (> 1: cmat is faster);
``pgd_fold_speedup`` = unfolded time / folded time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cmat.attacks import PGD  # noqa: E402
from cmat.nn import MultiHeadNet  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_variants(variants: dict, repeats: int, device: torch.device, clock: str = "wall") -> dict:
    """``{name: [seconds]}``: one untimed warm-up call each, then ``repeats`` interleaved rounds."""
    now = CLOCKS[clock]
    times = {name: [] for name in variants}
    for rnd in range(repeats + 1):
        for name, fn in variants.items():
            _sync(device)
            start = now()
            fn()
            _sync(device)
            if rnd:
                times[name].append(now() - start)
    return times


def bench_pgd(args) -> dict:
    device = torch.device(args.device)
    size = 32 if args.arch in ("vgg16", "resnet18") else 16
    torch.manual_seed(args.seed)
    net = MultiHeadNet(args.arch, 3, size, [10], [[0.5, 0.5, 0.5]], [[0.25, 0.25, 0.25]], width=args.width)
    view = net.task_view(0).to(device).eval()
    x = torch.rand(args.batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    eps, alpha, steps = 8 / 255, 2 / 255, args.steps
    gen = torch.Generator().manual_seed(args.seed)
    folded = PGD(eps, alpha, steps, random_start=True)
    unfolded = PGD(eps, alpha, steps, random_start=True, fold_bn=False)
    variants = {"cmat": lambda: folded(view, x, y, generator=gen),
                "cmat_nofold": lambda: unfolded(view, x, y, generator=gen)}
    try:
        import torchattacks
        ta = torchattacks.PGD(view, eps=eps, alpha=alpha, steps=steps, random_start=True)
        variants["torchattacks"] = lambda: ta(x, y)
    except ImportError:
        print("torchattacks not installed: no comparison (pip install cmat[test])", file=sys.stderr)
    times = time_variants(variants, args.repeats, device, args.clock)
    out = {"pgd_arch": args.arch, "pgd_width": args.width, "pgd_batch": args.batch, "pgd_steps": steps,
           "pgd_input": [3, size, size]}
    for name, ts in times.items():
        out[f"pgd_{name}_s"] = statistics.median(ts)
        out[f"pgd_{name}_min_s"] = min(ts)
    out["pgd_cmat_images_per_s"] = args.batch / out["pgd_cmat_s"]
    out["pgd_fold_speedup"] = out["pgd_cmat_nofold_s"] / out["pgd_cmat_s"]
    if "torchattacks" in times:
        out["pgd_vs_torchattacks"] = out["pgd_torchattacks_s"] / out["pgd_cmat_s"]
        out["pgd_nofold_vs_torchattacks"] = out["pgd_torchattacks_s"] / out["pgd_cmat_nofold_s"]
    return out


BENCHMARKS = {"pgd": bench_pgd}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(BENCHMARKS), help="run one benchmark")
    p.add_argument("--arch", default="vgg16", choices=["vgg16", "resnet18", "smallcnn"])
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the network")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="attack steps (PGD-K)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant after one warm-up")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run: width 0.125, batch 8, 2 steps, 1 repeat")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.steps, args.repeats = 0.125, 8, 2, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(), "clock": args.clock,
               "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    for name, fn in BENCHMARKS.items():
        if args.only in (None, name):
            results.update(fn(args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    return results


if __name__ == "__main__":
    main()
