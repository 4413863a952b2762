"""The textbook IBP recipe (Gowal et al. 2018; Shi et al. 2021), standalone, on cmat's
digits-5split split: the reference cmat's certified presets must match.

    python scripts/ibp_reference.py [--epochs 60] [--eps 0.2] [--seed 0]

Per task, a fresh CNN (conv 3×3 1→32 pad 1, ReLU, conv 3×3 32→64 stride 2 pad 1, ReLU,
FC 1024→128, ReLU, FC 128→2; no BN), Adam lr 1e-3, batch 32; ε schedule over all iterations:
10% natural, linear ramp to ε over 50%, ε for the rest; loss κ·CE(f(x)) + (1−κ)·CE(worst-case
logits from interval bounds), κ 1 → 0.5 along the ramp. Certified accuracy by the same interval
bounds on the whole test set. Only the data split comes from cmat; bounds, model and loop are
written here, independently of cmat.bounds.
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from cmat.tasks import get_tasks


def interval(model, x, eps, mean, std):
    lo, hi = ((x - eps).clamp(0, 1) - mean) / std, ((x + eps).clamp(0, 1) - mean) / std
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            mid = layer(mid)
            rad = F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding) \
                if isinstance(layer, nn.Conv2d) else F.linear(rad, layer.weight.abs())
            lo, hi = mid - rad, mid + rad
        else:  # ReLU, Flatten: monotone
            lo, hi = layer(lo), layer(hi)
    return lo, hi


def worst_logits(model, x, y, eps, mean, std):
    lo, hi = interval(model, x, eps, mean, std)
    onehot = F.one_hot(y, lo.shape[1]).bool()
    return torch.where(onehot, lo, hi)  # own logit at its lowest, the others at their highest


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start, total_cert, total_clean, total_n = time.time(), 0, 0, 0
    for task in get_tasks("digits-5split", seed=args.seed):
        torch.manual_seed(args.seed)
        xtr, ytr = task.train.tensors()
        xte, yte = task.test.tensors()
        mean, std = torch.tensor(task.mean).view(1, -1, 1, 1), torch.tensor(task.std).view(1, -1, 1, 1)
        model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                              nn.ReLU(), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(),
                              nn.Linear(128, task.num_classes))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps = args.epochs * -(-len(ytr) // 32)
        it = 0
        for _ in range(args.epochs):
            for idx in torch.randperm(len(ytr)).split(32):
                r = min(max((it / steps - 0.1) / 0.5, 0.0), 1.0)
                eps, kappa = r * args.eps, 1 - 0.5 * r
                x, y = xtr[idx], ytr[idx]
                loss = kappa * F.cross_entropy(model((x - mean) / std), y)
                if eps > 0:
                    loss = loss + (1 - kappa) * F.cross_entropy(worst_logits(model, x, y, eps, mean, std), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                it += 1
        with torch.no_grad():
            clean = model((xte - mean) / std).argmax(1) == yte
            lo, hi = interval(model, xte, args.eps, mean, std)
            own = lo.gather(1, yte.view(-1, 1))
            cert = clean & (hi.masked_fill(F.one_hot(yte, hi.shape[1]).bool(), -1e9) < own).all(1)
        print(f"{task.name}: clean {clean.float().mean():.3f} IBP-certified {cert.float().mean():.3f} (n {len(yte)})")
        total_cert, total_clean, total_n = (total_cert + int(cert.sum()), total_clean + int(clean.sum()),
                                            total_n + len(yte))
    print(f"all tasks: clean {total_clean / total_n:.3f} IBP-certified {total_cert / total_n:.3f} "
          f"(n {total_n}), {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
