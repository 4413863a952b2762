"""The evaluation harness: accuracy and macro-F1 of one task's model under configured attacks.

Contract of :func:`evaluate_task`:

- **One denominator.** Every column (clean included) is computed on the same images: the whole
  test set, or a fixed seeded subset of ``samples`` images. The clean accuracy on the whole
  test set is reported beside it (``acc_full``/``n_full`` of the ``clean`` entry).
- **Robust means correct at every point found.** An image counts as robust to an attack only if
  it is classified correctly clean *and* at the attack's point (x itself lies in the ε-ball), so
  attacks only run on the clean-correct images and no robust number can exceed clean.
- **Worst case.** ``worst``: an image counts only if it is correct clean and survives every
  attack that was run (per image, never estimated from the columns).
- **Repeatable.** Each (task, attack) pair draws its random starts from its own generator seeded
  by ``(seed, task, attack name)``, so a repeated evaluation of the same model is bit-identical —
  which is what makes "zero forgetting" checkable as equality.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import torch
from torch import nn

from cmat.attacks import PGD, check_attack_name, make_attack, sound_alpha
from cmat.errors import CmatError
from cmat.metrics import macro_f1
from cmat.seeding import derived_seed, generator

WORST = "worst"


def build_attacks(names, eps: float, alpha: float, n_classes: Optional[int] = None,
                  alphas: Optional[dict] = None) -> dict:
    """Attack objects by evaluation name (``clean`` → None, always present and first),
    validating every name; ``worst`` is derived per image, not an attack, and is skipped."""
    names = ["clean"] + [n for n in names if str(n).strip().lower() not in ("clean", WORST)]
    return {name: make_attack(name, eps=eps, alpha=alpha, n_classes=n_classes, alphas=alphas) for name in names}


def result_columns(attacks: dict) -> list:
    """The columns an evaluation with ``attacks`` reports, in display order: clean and the
    attacks, ``worst`` (when an attack ran), then proofs (``certified``)."""
    proofs = [n for n, a in attacks.items() if a is not None and a.certifies]
    plain = [n for n in attacks if n not in proofs]
    has_attack = any(attacks[n] is not None for n in plain)
    return plain + ([WORST] if has_attack else []) + proofs


def attack_params(attacks: dict) -> dict:
    return {name: ({"eps": 0.0, "alpha": 0.0, "steps": 0} if atk is None else atk.params())
            for name, atk in attacks.items()}


AA_ORDER = ("apgd-ce", "apgd-t", "fab-t", "square")


def check_names(names) -> list:
    """``names`` with every one checked (``worst`` included) without building an attack: the
    up-front check before data is loaded; head-size checks come with :func:`task_attacks`."""
    return [n if str(n).strip().lower() == WORST else check_attack_name(n) for n in names]


def task_attacks(names, eps: float, alpha: float, head_sizes, alphas: Optional[dict] = None,
                 task_names=None) -> list:
    """Per task, :func:`build_attacks` sized to its head (``apgd-t``, ``aa``); an attack a head
    cannot take (``apgd-t`` on fewer than 4 classes) is one :class:`CmatError` line naming the
    task, raised before anything is evaluated."""
    out = []
    for j, n_classes in enumerate(head_sizes):
        try:
            out.append(build_attacks(names, eps, alpha, n_classes, alphas=alphas))
        except CmatError as err:
            name = f" ({task_names[j]})" if task_names is not None else ""
            raise CmatError(f"task {j}{name}, {n_classes} classes: {err}") from None
    return out


def attacks_as_run(per_task: list) -> dict:
    """Every attack's parameters as run over tasks (``per_task``: :func:`task_attacks`): what no
    head changes once; for ``aa`` the union of the components run and ``components_per_task``,
    for ``apgd-t`` ``targets_per_task`` (n_classes − 1 each), instead of one head's size."""
    out = attack_params(per_task[0])
    for name, params in out.items():
        atk = per_task[0][name]
        if hasattr(atk, "components"):
            comps = [at[name].components for at in per_task]
            params.pop("n_classes", None)
            params["components"] = [c for c in AA_ORDER if any(c in cs for cs in comps)]
            params["components_per_task"] = comps
        elif getattr(atk, "loss", None) == "dlr-targeted":
            params.pop("n_classes", None)
            params["targets_per_task"] = [at[name].n_classes - 1 for at in per_task]
    return out


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


def _entry(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    correct = (pred == y).numpy()
    return {"acc": float(correct.mean()) if len(y) else 0.0, "f1": macro_f1(pred.numpy(), y.numpy(), num_classes),
            "n": int(len(y)), "correct": correct}


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of what an evaluation of ``model`` depends on: the architecture and every tensor
    of its eval-mode plain export (masked networks: task j's effective weights, BN, head), with
    −0.0 and +0.0 hashed alike.
    Evaluation is a deterministic function of the model and the seeds, so two evaluations of
    models with the same fingerprint give bit-identical results — the engine reuses them for
    tasks a later task did not change (CMAT/PackNet/individual models), which keeps the cost
    of ``aa`` after every task linear instead of quadratic in the number of tasks."""
    model.eval()
    export = model.plain_equivalent() if hasattr(model, "plain_equivalent") else model
    h = hashlib.sha256(repr(export).encode())
    for name, value in export.state_dict().items():
        v = value.detach().cpu().contiguous().reshape(-1)
        if v.is_floating_point():
            v = v + 0.0  # −0.0 → +0.0: masked-out weights are ±0 by the sign of W, equal values
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FrozenCheck:
    """Cheap evidence that a task's model still computes what was evaluated: its eval-mode logits
    on the first ``PROBE`` evaluated test images, compared bit for bit. Used for methods that
    declare a learned task frozen (``Method.evaluations_of(j) == 1``), where hashing every
    earlier task's weights after every task (``model_fingerprint``) would make evaluation cost
    grow with the task count. After each task the engine probes the ``PROBES_PER_TASK`` frozen
    tasks checked longest ago (even one probe per earlier task grew the 20-task VGG16
    evaluation by ~0.3 s per task); ``fingerprint`` (the full hash at evaluation) is kept for
    the end-of-run check, which compares every reused task's weights."""

    PROBE = 8
    PROBES_PER_TASK = 2

    def __init__(self, model: nn.Module, data, indices, fingerprint: str, device, task_time: int = 0):
        idx = torch.as_tensor(np.asarray(indices[: self.PROBE], dtype=np.int64))
        self.x = data.tensors(idx)[0]
        self.device = device
        self.fingerprint = fingerprint
        self.evaluated_after = task_time  # the task after which this evaluation was made
        self.checked_after = task_time    # ... and after which it was last confirmed
        self.logits = self._logits(model)

    @torch.no_grad()
    def _logits(self, model: nn.Module) -> torch.Tensor:
        model.eval()
        return model(self.x.to(self.device)).float().cpu()

    def unchanged(self, model: nn.Module, task_time: int = 0) -> bool:
        same = torch.equal(self._logits(model), self.logits)
        if same:
            self.checked_after = task_time
        return same


def evaluate_task(model: nn.Module, data, attacks: dict, num_classes: int, seed: int, task: int,
                  samples: Optional[int] = None, batch_size: int = 256, device="cpu", progress=None) -> dict:
    """``{column: {"acc", "f1", "n", "correct"}}`` for one task's model on a dataset
    (``ImageData``): one entry per attack name plus ``worst`` when an attack ran; ``correct`` is
    the per-image outcome (bool array over ``clean["indices"]``, the evaluated test images);
    ``clean`` also holds ``acc_full``/``n_full``, clean accuracy on the whole test set.
    ``progress(name)`` is called before each attack (for status lines)."""
    x, y = data.tensors()
    pred_full = predictions(model, x, y, None, None, batch_size, device)
    subset = eval_subset(len(y), samples, seed, task)
    indices = torch.arange(len(y)) if subset is None else subset
    xs, ys, clean_pred = x[indices], y[indices], pred_full[indices]
    alive = (clean_pred == ys).nonzero().squeeze(1)
    results, worst_pred = {}, clean_pred.clone()
    for name, atk in attacks.items():
        pred = clean_pred.clone()
        if atk is not None and atk.certifies:  # a proof, not an attack: never part of worst
            if alive.numel():
                if progress is not None:
                    progress(name)
                unproven = alive[~atk.proven(model, xs[alive], ys[alive], device).cpu()]
                pred[unproven] = (ys[unproven] + 1) % num_classes  # "not proven" counts as wrong
            results[name] = _entry(pred, ys, num_classes)
            continue
        if atk is not None and alive.numel():
            if progress is not None:
                progress(name)
            pred[alive] = predictions(model, xs[alive], ys[alive], atk, generator(seed, "eval", task, name),
                                      batch_size, device)
            first_break = (worst_pred == ys) & (pred != ys)
            worst_pred[first_break] = pred[first_break]
        results[name] = _entry(pred, ys, num_classes)
    clean = results.setdefault("clean", _entry(clean_pred, ys, num_classes))
    clean.update(acc_full=float((pred_full == y).float().mean()) if len(y) else 0.0, n_full=int(len(y)),
                 indices=indices.numpy())
    if WORST in result_columns(attacks):
        results[WORST] = _entry(worst_pred, ys, num_classes)
    check_sound(results, attacks, task)
    return results


def check_sound(results: dict, attacks: dict, task: int) -> None:
    """A proof that an attack of the same evaluation refutes is a bug, not a number: raise
    (a loud :class:`CmatError` naming the images) when an image counted certified is broken by
    any attack (``worst`` wrong)."""
    if WORST not in results:
        return
    survived = results[WORST]["correct"]
    for name, atk in attacks.items():
        if atk is not None and atk.certifies:
            refuted = np.flatnonzero(results[name]["correct"] & ~survived)
            if refuted.size:
                raise CmatError(f"UNSOUND: task {task + 1}: {refuted.size} image(s) counted certified by {name} "
                                f"are broken by an attack of the same evaluation (evaluated-image positions "
                                f"{refuted[:10].tolist()}); the bound or the attack is wrong, no result written")


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, gen=None,
                    batch_size: int = 256, device="cpu") -> float:
    pred = predictions(model, x, y, attack, gen, batch_size, device)
    return float((pred == y).float().mean()) if len(y) else 0.0


def eps_sweep(model, x, y, eps_values, steps: int = 10, alpha_ratio: float = 0.25, seed: int = 0,
              batch_size: int = 256, device="cpu") -> list:
    """PGD accuracy over ε, α = :func:`sound_alpha` (ε, alpha_ratio·ε, steps) so the steps can
    cross every ball: ``[{"eps", "alpha", "steps", "acc"}]``."""
    rows = []
    for eps in eps_values:
        if eps == 0:
            acc = robust_accuracy(model, x, y, None, None, batch_size, device)
            rows.append({"eps": 0.0, "alpha": 0.0, "steps": 0, "acc": acc})
            continue
        step = sound_alpha(eps, alpha_ratio * eps, steps)
        atk = PGD(eps=eps, alpha=step, steps=steps)
        acc = robust_accuracy(model, x, y, atk, generator(seed, "eps-sweep", eps), batch_size, device)
        rows.append({"eps": float(eps), "alpha": step, "steps": steps, "acc": acc})
    return rows


def steps_sweep(model, x, y, eps: float, alpha: float, steps_values, seed: int = 0,
                batch_size: int = 256, device="cpu") -> list:
    """PGD accuracy over the number of steps k at fixed ε ("accuracy over difficulty"), each with
    α = :func:`sound_alpha` (ε, alpha, k)."""
    rows = []
    for steps in steps_values:
        step = sound_alpha(eps, alpha, int(steps))
        atk = PGD(eps=eps, alpha=step, steps=int(steps))
        acc = robust_accuracy(model, x, y, atk, generator(seed, "steps-sweep", steps), batch_size, device)
        rows.append({"eps": eps, "alpha": step, "steps": int(steps), "acc": acc})
    return rows
