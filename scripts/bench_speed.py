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
from cmat.nn.backbones import ARCHS  # noqa: E402


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


def _masked_and_plain(args, size):
    """A masked VGG/CNN with two tasks (task 2 picks half of task 1's weights through a
    piggyback mask) and a plain MultiHeadNet holding task 2's effective weights, BN and head."""
    from cmat.nn.masked import MaskedMultiHeadNet

    torch.manual_seed(args.seed)
    mean, std = [0.5] * 3, [0.25] * 3
    masked = MaskedMultiHeadNet(args.arch, 3, size, width=args.width)
    masked.add_task(0, 10, mean, std, 1.0)
    masked.prune_owned(0, 0.5)
    masked.add_task(1, 10, mean, std, 1.0)
    for m in masked.masked_layers():
        m.set_bits(2, torch.rand(m.weight.shape) < 0.5)
    masked.eval()
    plain = MultiHeadNet(args.arch, 3, size, [10], [mean], [std], width=args.width).eval()
    mlayers = masked.masked_layers()
    players = [m for m in plain.features.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    mbns = [m.bns["2"] for m in masked.features.modules() if hasattr(m, "bns")]
    pbns = [m for m in plain.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for ml, pl in zip(mlayers, players):
            pl.weight.copy_(ml.effective_weight(2))
            if pl.bias is not None:
                pl.bias.copy_(ml.bias_for(2))
        for mb, pb in zip(mbns, pbns):
            pb.load_state_dict(mb.state_dict())
        plain.heads[0].load_state_dict(masked.heads["1"].state_dict())
    return masked.task_view(1), plain.task_view(0)


def bench_masked(args) -> dict:
    """Masked network (cached effective weights) against a plain module with the same
    effective weights: eval forward and PGD-K. ``masked_*_vs_plain`` = plain time / masked time
    (goal ≥ 0.98: masking is free). The plain side runs unfolded too, so both compute the same."""
    device = torch.device(args.device)
    size = 32 if args.arch in ("vgg16", "resnet18") else 16
    masked, plain = _masked_and_plain(args, size)
    masked, plain = masked.to(device), plain.to(device)
    x = torch.rand(args.batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    with torch.no_grad():
        same = torch.allclose(masked(x), plain(x), atol=1e-4)
    atk = PGD(8 / 255, 2 / 255, args.steps, fold_bn=False)
    gen = torch.Generator()

    def fwd(model):
        with torch.no_grad():
            model(x)

    times = time_variants({"masked_fwd": lambda: fwd(masked), "plain_fwd": lambda: fwd(plain),
                           "masked_pgd": lambda: atk(masked, x, y, generator=gen.manual_seed(0)),
                           "plain_pgd": lambda: atk(plain, x, y, generator=gen.manual_seed(0))},
                          args.repeats, device, args.clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"masked_same_logits": bool(same), **{f"masked_{k}_s": v for k, v in med.items()},
            "masked_fwd_vs_plain": med["plain_fwd"] / med["masked_fwd"],
            "masked_pgd_vs_plain": med["plain_pgd"] / med["masked_pgd"]}


def _geometry(args):
    """(channels, image size) of the synthetic batches: ``--channels``/``--size`` when given,
    else CIFAR's 3×32×32 for the big nets and 3×16×16 for the small ones."""
    size = args.size or (32 if args.arch in ("vgg16", "resnet18") else 16)
    return args.channels, size


def _cmat_at_parts(args, device, accel_cfg=None):
    """The pieces of one masked CMAT PGD-K training step on task 2 of a two-task masked network,
    the way ``Trainer.fit`` does it, optionally under ``accel_cfg`` (bf16 / channels_last):
    ``(step, fwd_bwd)`` closures. ``step``: attack with cmat's PGD, then the loss, backward,
    piggyback-mask Adam, owned-weight decay and SGD. ``fwd_bwd``: one training-mode forward and
    backward of the same view, batch and dtype -- the unit the step's limit is counted in."""
    import torch.nn.functional as F

    from cmat import accel
    from cmat.config import AccelConfig
    from cmat.engine import optimizer_step
    from cmat.nn.masked import MaskedMultiHeadNet

    accel_cfg = accel_cfg or AccelConfig()
    channels, size = _geometry(args)
    torch.manual_seed(args.seed)
    mean, std = [0.5] * channels, [0.25] * channels
    masked = MaskedMultiHeadNet(args.arch, channels, size, width=args.width)
    masked.add_task(0, 10, mean, std, 1.0)
    masked.prune_owned(0, 0.5)
    masked.add_task(1, 10, mean, std, 1.0)
    for m in masked.masked_layers():
        m.start_piggyback(2)
    masked.to(device)
    accel.prepare_model(accel_cfg, masked)
    x = accel.prepare_batch(accel_cfg, torch.rand(args.batch, channels, size, size, device=device))
    y = torch.randint(0, 10, (args.batch,), device=device)
    view = masked.task_view(1)
    sgd = torch.optim.SGD(masked.param_groups(1, 4e-5), lr=0.01, momentum=0.9, nesterov=True, fused=True)
    adam = torch.optim.Adam([m.piggy["2"] for m in masked.masked_layers()], lr=5e-4, fused=True)
    atk = PGD(8 / 255, 2 / 255, args.steps)
    gen = torch.Generator()

    def step():
        with accel.autocast(accel_cfg, device):
            xa = atk(view, x, y, generator=gen.manual_seed(0))
            view.train()
            loss = F.cross_entropy(view(xa), y)
        sgd.zero_grad(set_to_none=True)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        masked.owned_weight_decay(1, 4e-5)
        optimizer_step(sgd)
        optimizer_step(adam)

    def fwd_bwd():
        view.train()
        with accel.autocast(accel_cfg, device):
            loss = F.cross_entropy(view(x), y)
        loss.backward()

    return step, fwd_bwd


def _cmat_at_step(args, device, accel_cfg=None):
    """One masked CMAT PGD-K training step (:func:`_cmat_at_parts`) as a closure."""
    return _cmat_at_parts(args, device, accel_cfg)[0]


def bench_at_step(args) -> dict:
    """One PGD-K adversarial-training step: a plain PyTorch loop (torchattacks-style attack,
    loss.backward(), SGD) on an unmasked copy of the architecture against our masked CMAT step
    (:func:`_cmat_at_step`). ``at_step_vs_plain`` = plain time / ours (≥ 1.0: our machinery
    costs nothing)."""
    import torch.nn.functional as F

    device = torch.device(args.device)
    channels, size = _geometry(args)
    ours = _cmat_at_step(args, device)
    torch.manual_seed(args.seed)
    plain = MultiHeadNet(args.arch, channels, size, [10], [[0.5] * channels], [[0.25] * channels],
                         width=args.width).to(device)
    x = torch.rand(args.batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    eps, alpha, steps = 8 / 255, 2 / 255, args.steps
    pview = plain.task_view(0)
    popt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)

    def reference():
        pview.eval()
        xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(pview(xa), y), xa)
            xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
        pview.train()
        loss = F.cross_entropy(pview(xa), y)
        popt.zero_grad(set_to_none=True)
        loss.backward()
        popt.step()

    times = time_variants({"ours": ours, "plain": reference}, args.repeats, device, args.clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"at_step_ours_s": med["ours"], "at_step_plain_s": med["plain"],
            "at_step_vs_plain": med["plain"] / med["ours"]}


def bench_accel(args) -> dict:
    """The GPU fast paths on our masked CMAT step: float32 against bf16 autocast and against
    channels_last. ``accel_<variant>_speedup`` = float32 time / variant time (> 1: faster).
    Measure on the device you train on; on CPUs without bf16 units both are slower."""
    from cmat.config import AccelConfig

    device = torch.device(args.device)
    variants = {"fp32": _cmat_at_step(args, device),
                "bf16": _cmat_at_step(args, device, AccelConfig(bf16="on")),
                "channels_last": _cmat_at_step(args, device, AccelConfig(channels_last=True))}
    times = time_variants(variants, args.repeats, device, args.clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"accel_device": str(device), **{f"accel_{k}_s": v for k, v in med.items()},
            "accel_bf16_speedup": med["fp32"] / med["bf16"],
            "accel_channels_last_speedup": med["fp32"] / med["channels_last"]}


def bench_limit(args) -> dict:
    """The masked CMAT PGD-K training step against its limit, (K+1) × one forward+backward of the
    same network, batch and dtype (K attack gradients and the training gradient), in float32 and
    under bf16 autocast. ``limit_ratio_<dtype>`` = step time / limit (1.0: the step costs nothing
    beyond its passes); ``limit_bf16_speedup`` = float32 step time / bf16 step time."""
    from cmat.config import AccelConfig

    device = torch.device(args.device)
    variants = {}
    for dtype, cfg in (("fp32", None), ("bf16", AccelConfig(bf16="on"))):
        step, fwd_bwd = _cmat_at_parts(args, device, cfg)
        variants[f"step_{dtype}"], variants[f"fwdbwd_{dtype}"] = step, fwd_bwd
    times = time_variants(variants, args.repeats, device, args.clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"limit_arch": args.arch, "limit_geometry": "{}×{s}×{s}".format(*_geometry(args)[:1], s=_geometry(args)[1]),
           "limit_steps": args.steps}
    for dtype in ("fp32", "bf16"):
        limit = (args.steps + 1) * med[f"fwdbwd_{dtype}"]
        out.update({f"limit_step_{dtype}_s": med[f"step_{dtype}"], f"limit_{dtype}_s": limit,
                    f"limit_ratio_{dtype}": med[f"step_{dtype}"] / limit})
    out["limit_bf16_speedup"] = med["step_fp32"] / med["step_bf16"]
    return out


def bench_store(args) -> dict:
    """Store bytes for T synthetic tasks on VGG16 (each task owns a share of the weights and a
    random piggyback mask over the earlier ones) against the float32 weight bytes, with CPG's
    layout (a float32 piggymask per task) computed beside it."""
    import tempfile

    import h5py

    from cmat.nn.masked import MaskedMultiHeadNet
    from cmat.store import write_masks, write_state

    tasks = args.store_tasks
    torch.manual_seed(args.seed)
    net = MaskedMultiHeadNet("vgg16", 3, 32, width=args.width)
    weights = sum(m.weight.numel() for m in net.masked_layers())
    for t in range(tasks):
        net.add_task(t, 5, [0.5] * 3, [0.25] * 3, 1.0)
        if t < tasks - 1:
            net.prune_owned(t, 1 - 1 / (tasks - t))  # leave room for the remaining tasks
        if t > 0:
            for m in net.masked_layers():
                m.set_bits(t + 1, torch.rand(m.weight.shape) < 0.5)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.h5"
        with h5py.File(path, "w") as f:
            g = f.create_group("n")
            write_state(g.create_group("state"), net.state_dict())
            write_masks(g, net)
        size = path.stat().st_size
    f32 = 4 * weights
    cpg = f32 + tasks * 4 * weights + tasks * weights  # weights + float32 piggymask + uint8 owner copy per task
    return {"store_tasks": tasks, "store_weights": weights, "store_bytes": size, "store_float32_weight_bytes": f32,
            "store_vs_float32": size / f32, "store_cpg_layout_bytes": cpg, "store_cpg_vs_ours": cpg / size,
            "store_bytes_per_task": size / tasks}


def bench_bounds(args) -> dict:
    """Bound throughput (samples/s) of IBP and CROWN on the small CNN (8×8, width 0.5)."""
    from cmat.bounds import margin_lower_bound, network_ops

    torch.manual_seed(args.seed)
    net = MultiHeadNet("smallcnn", 1, 8, [10], [[0.3]], [[0.3]], width=0.5).eval()
    view = net.task_view(0)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        y = view(x).argmax(1)
        ops = network_ops(view)
        eps = torch.full((32,), 0.02)
        times = time_variants({"ibp": lambda: margin_lower_bound(ops, x, y, eps, "ibp"),
                               "crown": lambda: margin_lower_bound(ops, x, y, eps, "crown")},
                              args.repeats, torch.device("cpu"), args.clock)
    return {f"bounds_{k}_samples_per_s": 32 / statistics.median(v) for k, v in times.items()}


BENCHMARKS = {"pgd": bench_pgd, "masked": bench_masked, "at_step": bench_at_step, "accel": bench_accel,
              "limit": bench_limit, "store": bench_store,
              "bounds": bench_bounds}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(BENCHMARKS), help="run one benchmark")
    p.add_argument("--arch", default="vgg16", choices=sorted(ARCHS))
    p.add_argument("--channels", type=int, default=3, help="input channels of the synthetic batches (MNIST: 1)")
    p.add_argument("--size", type=int, default=None, help="image side (default: 32 for vgg16/resnet18, else 16)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the network")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="attack steps (PGD-K)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant after one warm-up")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store-tasks", type=int, default=20, help="tasks in the synthetic store benchmark")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: width 0.125, batch 8, 2 steps, 1 repeat")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--limit-md", type=Path, default=None,
                   help="with --only limit: run it for each of --limit-archs and write a Markdown table here")
    p.add_argument("--limit-archs", default="mlp,cnn-ibp,smallcnn", help="networks of the --limit-md table")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.steps, args.repeats = 0.125, 8, 2, 1
    return args


def limit_markdown(args, base: dict) -> str:
    """The limit benchmark for each network of ``--limit-archs``, as one Markdown table."""
    rows = []
    for arch in args.limit_archs.split(","):
        args.arch = arch
        r = bench_limit(args)
        rows.append(f"| {arch} | {r['limit_geometry']} | {r['limit_step_fp32_s'] * 1e3:.1f} | "
                    f"{r['limit_ratio_fp32']:.2f} | {r['limit_step_bf16_s'] * 1e3:.1f} | {r['limit_ratio_bf16']:.2f} | "
                    f"{r['limit_bf16_speedup']:.2f} |")
    head = (f"Masked CMAT PGD-{args.steps} training step, batch {args.batch}, {args.channels} channel(s), "
            f"{base['threads']} thread(s), {base['clock']} clock, median of {args.repeats}; limit = "
            f"({args.steps}+1) × one training forward+backward of the same net, batch and dtype; "
            f"torch {base['torch']}; {base['machine']} "
            f"(`python scripts/bench_speed.py --only limit --channels {args.channels} --size {args.size} "
            f"--batch {args.batch} --threads {base['threads']} --clock {base['clock']} --limit-md FILE`)")
    return "\n".join([head, "", "| network | input | step fp32 (ms) | step / limit fp32 | step bf16 (ms) | "
                       "step / limit bf16 | bf16 speedup |", "|---|---|---|---|---|---|---|", *rows]) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.limit_md:
        from cmat.provenance import describe_cpu, cpu_fingerprint
        base = {"torch": torch.__version__, "threads": torch.get_num_threads(), "clock": args.clock,
                "machine": describe_cpu(cpu_fingerprint())}
        args.limit_md.parent.mkdir(parents=True, exist_ok=True)
        args.limit_md.write_text(limit_markdown(args, base))
        print(args.limit_md.read_text())
        return base
    results = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
               "clock": args.clock, "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
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
