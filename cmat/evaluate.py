"""The evaluation harness: accuracy and macro-F1 of one task's model under configured attacks.

Contract: clean accuracy uses the whole test set; attacks use all of it or a fixed seeded
subset of ``samples`` images. Each (task, attack) pair draws its random starts from its own
generator seeded by ``(seed, task, attack name)``, so a repeated evaluation of the same model is
bit-identical — which is what makes "zero forgetting" checkable as equality.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from cmat.attacks import PGD, make_attack
from cmat.metrics import macro_f1
from cmat.seeding import derived_seed, generator


def build_attacks(names, eps: float, alpha: float, n_classes: Optional[int] = None) -> dict:
    """Attack objects by evaluation name (``clean`` → None), validating every name."""
    return {name: make_attack(name, eps=eps, alpha=alpha, n_classes=n_classes) for name in names}


def attack_params(attacks: dict) -> dict:
    return {name: ({"eps": 0.0, "alpha": 0.0, "steps": 0} if atk is None else atk.params())
            for name, atk in attacks.items()}


def eval_subset(n: int, samples: Optional[int], seed: int, task: int) -> Optional[torch.Tensor]:
    """Sorted indices of the fixed attack subset, or None for the whole set."""
    if samples is None or samples >= n:
        return None
    rng = np.random.default_rng(derived_seed(seed, "eval-subset", task))
    return torch.from_numpy(np.sort(rng.choice(n, size=samples, replace=False)))


def predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack=None, gen=None,
                batch_size: int = 256, device="cpu") -> torch.Tensor:
    """Predicted labels of ``model`` on ``x`` (attacked by ``attack`` if given), batch by batch."""
    out = []
    model.eval()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        yb = y[i:i + batch_size].to(device)
        if attack is not None:
            xb = attack(model, xb, yb, generator=gen)
        with torch.no_grad():
            out.append(model(xb).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def evaluate_task(model: nn.Module, data, attacks: dict, num_classes: int, seed: int, task: int,
                  samples: Optional[int] = None, batch_size: int = 256, device="cpu") -> dict:
    """``{attack: {"acc", "f1", "n"}}`` for one task's model on a dataset (``ImageData``)."""
    x, y = data.tensors()
    subset = eval_subset(len(y), samples, seed, task)
    results = {}
    for name, atk in attacks.items():
        xs, ys = (x, y) if (atk is None or subset is None) else (x[subset], y[subset])
        pred = predictions(model, xs, ys, atk, generator(seed, "eval", task, name), batch_size, device)
        results[name] = {"acc": float((pred == ys).float().mean()) if len(ys) else 0.0,
                         "f1": macro_f1(pred.numpy(), ys.numpy(), num_classes), "n": int(len(ys))}
    return results


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, gen=None,
                    batch_size: int = 256, device="cpu") -> float:
    pred = predictions(model, x, y, attack, gen, batch_size, device)
    return float((pred == y).float().mean()) if len(y) else 0.0


def eps_sweep(model, x, y, eps_values, steps: int = 10, alpha_ratio: float = 0.25, seed: int = 0,
              batch_size: int = 256, device="cpu") -> list:
    """PGD accuracy over ε (α = alpha_ratio·ε): ``[{"eps", "alpha", "steps", "acc"}]``."""
    rows = []
    for eps in eps_values:
        if eps == 0:
            acc = robust_accuracy(model, x, y, None, None, batch_size, device)
            rows.append({"eps": 0.0, "alpha": 0.0, "steps": 0, "acc": acc})
            continue
        atk = PGD(eps=eps, alpha=alpha_ratio * eps, steps=steps)
        acc = robust_accuracy(model, x, y, atk, generator(seed, "eps-sweep", eps), batch_size, device)
        rows.append({"eps": float(eps), "alpha": alpha_ratio * eps, "steps": steps, "acc": acc})
    return rows


def steps_sweep(model, x, y, eps: float, alpha: float, steps_values, seed: int = 0,
                batch_size: int = 256, device="cpu") -> list:
    """PGD accuracy over the number of steps at fixed ε and α ("accuracy over difficulty")."""
    rows = []
    for steps in steps_values:
        atk = PGD(eps=eps, alpha=alpha, steps=int(steps))
        acc = robust_accuracy(model, x, y, atk, generator(seed, "steps-sweep", steps), batch_size, device)
        rows.append({"eps": eps, "alpha": alpha, "steps": int(steps), "acc": acc})
    return rows
