"""Store size of a CMAT-shaped network, without training: bytes of ``store.h5`` / float32 weights.

    python scripts/store_rehearsal.py [--tasks 20] [--width 1.0] [--sparsity 0.83] [--picked 0.8] [--json]

Builds the CIFAR-100 20-split shape (VGG16-BN, 3×32×32 inputs, 5 classes per task) the way
``cmat run --method cmat`` leaves it, task by task: the task takes every free weight (new values,
Kaiming-uniform as a grown weight starts, standing in for training), picks a random ``--picked``
fraction of the earlier tasks' weights with its piggyback mask (independent bits: no structure
for gzip to find), gets its own BatchNorm statistics and head, and is compacted by releasing the
``--sparsity`` smallest-magnitude share of its weights (owner → 0, weight → 0, as CMAT's
compaction does). The defaults are what the default digits run (``cmat run``) measured on this
project's machine: final sparsity 0.79–0.90 per task (mean 0.83), piggyback masks picking
0.78–0.83 of the earlier weights (mean 0.80; the toy run: 0.71). Then it writes the
network through the store API (``cmat.store.save_run``), reads it back, checks that every tensor
came back bit for bit, and prints the bytes against ``4 ×`` the masked weights (the float32
weights; BN, biases and heads are extra tensors of the store, not counted as weights).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch


def rehearsal_net(tasks: int, width: float, sparsity: float, picked: float, seed: int, arch: str = "vgg16"):
    from cmat.nn.masked import MaskedMultiHeadNet

    gen = torch.Generator().manual_seed(seed)
    net = MaskedMultiHeadNet(arch, 3, 32, width=width)
    for t in range(tasks):
        net.add_task(t, 5, [0.507, 0.487, 0.441], [0.267, 0.256, 0.276], 1.0)
        with torch.no_grad():
            for m in net.masked_layers():
                own = m.owner == t + 1
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                m.weight[own] = (torch.rand(int(own.sum()), generator=gen) * 2 - 1) * bound
                if t > 0:
                    old = (m.owner > 0) & (m.owner <= t)
                    m.set_bits(t + 1, old & (torch.rand(m.weight.shape, generator=gen) < picked))
            for name, buf in net.named_buffers():
                if f".bns.{t + 1}." in name and buf.is_floating_point():
                    buf.copy_(torch.rand(buf.shape, generator=gen) + (0.5 if "var" in name else -0.5))
            for name, p in net.named_parameters():
                if f".bns.{t + 1}." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
        net.prune_owned(t, sparsity)
    return net.eval()


def tensors(net) -> dict:
    out = {f"state/{k}": v for k, v in net.state_dict().items()}
    for i, m in enumerate(net.masked_layers()):
        out[f"owner/{i}"] = m.owner
        out.update({f"piggyback/{t}/{i}": m.mask_bits(t) for t in m.bits})
    return out


class _Method:
    decisions: dict = {}

    def __init__(self, net, tasks):
        self.net, self.tasks = net, tasks

    def networks(self):
        return [self.net]

    def task_slots(self):
        return [(0, t) for t in range(self.tasks)]


def write(net, tasks: int, path: Path) -> Path:
    """``net`` as the store of a ``tasks``-task CIFAR-100 CMAT run, through ``cmat.store.save_run``."""
    from cmat.config import resolve
    from cmat.store import save_run

    seq = [SimpleNamespace(name=f"task-{t}", classes=list(range(5)), num_classes=5) for t in range(tasks)]
    return save_run(path, _Method(net, tasks), seq, resolve("cifar100-20split", overrides={"method": "cmat"}))


def measure(net, tasks: int) -> dict:
    """Write ``net`` through the store API, read it back (bit for bit or SystemExit) and size it."""
    import cmat

    with tempfile.TemporaryDirectory() as d:
        path = write(net, tasks, Path(d) / "store.h5")
        size = path.stat().st_size
        back = cmat.load(path).networks[0]
    want, got = tensors(net), tensors(back)
    if set(want) != set(got) or any(not torch.equal(want[k], got[k]) for k in want):
        sys.exit("the store did not give back the network it was given")
    weights = sum(m.weight.numel() for m in net.masked_layers())
    other = sum(p.numel() for n, p in net.state_dict().items() if p.is_floating_point()) - weights
    return {"tasks": tasks, "weights": weights, "other_floats": other, "store_bytes": size,
            "float32_weight_bytes": 4 * weights, "ratio": size / (4 * weights)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--sparsity", type=float, default=0.83)
    ap.add_argument("--picked", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    net = rehearsal_net(args.tasks, args.width, args.sparsity, args.picked, args.seed)
    res = {**measure(net, args.tasks), "width": args.width, "sparsity": args.sparsity, "picked": args.picked}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['tasks']} tasks, VGG16 width {args.width}: {res['weights']:,} weights, store "
              f"{res['store_bytes']:,} bytes = {res['ratio']:.3f}x the float32 weights")


if __name__ == "__main__":
    main()
