"""APGD (Croce & Hein 2020) and AutoAttack's standard suite, through torchattacks."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from cmat.checks import number
from cmat.attacks.base import Attack
from cmat.errors import CmatError

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
AA_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


class AutoPGD(Attack):
    """APGD (Croce & Hein 2020) through torchattacks: ``loss="ce"``/``"dlr"`` → ``APGD``,
    ``"dlr-targeted"`` → ``APGDT`` over the ``n_classes − 1`` most likely wrong classes
    (``n_classes`` = the task's head size). Step sizes are adaptive (initial 2ε), so
    ``params()["alpha"]`` is None. torchattacks seeds the global RNG itself; it gets a seed drawn
    from ``generator`` and runs inside ``torch.random.fork_rng``, so the caller's global RNG state
    is untouched and a seeded call is repeatable."""

    def __init__(self, eps: float = 8 / 255, steps: int = 100, loss: str = "ce",
                 n_classes: Optional[int] = None, restarts: int = 1, rho: float = 0.75, fold_bn: bool = True):
        try:
            import torchattacks
        except ImportError:
            raise CmatError("AutoPGD (apgd-ce, apgd-t) needs torchattacks: pip install cmat[test]") from None
        self.eps = number("attack eps", eps, 0)
        self.steps = number("attack steps", steps, 1, integer=True)
        self.restarts = number("attack restarts", restarts, 1, integer=True)
        self.rho = number("attack rho", rho, 0, lo_open=True)
        if loss not in APGD_LOSSES:
            raise CmatError(f"APGD loss must be one of {', '.join(APGD_LOSSES)}, got {loss!r}")
        need = {"ce": 2, "dlr": 3, "dlr-targeted": 4}[loss]
        if loss == "dlr-targeted" and n_classes is None:
            raise CmatError("apgd-t needs n_classes (the task's head size)")
        if n_classes is not None and number("attack n_classes", n_classes, 1, integer=True) < need:
            if loss == "dlr-targeted":  # targeted DLR divides by z_π1 − (z_π3 + z_π4)/2
                raise CmatError(f"apgd-t needs a head of at least 4 classes (its targeted DLR loss uses the 3rd "
                                f"and 4th largest logits), the head has {n_classes}; use apgd-ce, or aa "
                                "(which leaves APGD-T out on such heads)")
            raise CmatError(f"APGD loss {loss!r} needs at least {need} classes, the head has {n_classes}; use apgd-ce")
        self.loss, self.n_classes, self.fold_bn = loss, n_classes, bool(fold_bn)
        self._torchattacks = torchattacks

    def params(self) -> dict:
        return {"attack": "APGD", "eps": self.eps, "alpha": None, "steps": self.steps,
                "restarts": self.restarts, "loss": self.loss, "n_classes": self.n_classes}

    def _run(self, model, grad_model, x, y, generator):
        device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator, device=device))
        common = dict(norm="Linf", eps=self.eps, steps=self.steps, n_restarts=self.restarts, seed=seed, rho=self.rho)
        if self.loss == "dlr-targeted":
            atk = self._torchattacks.APGDT(grad_model, n_classes=self.n_classes, **common)
        else:
            atk = self._torchattacks.APGD(grad_model, loss=self.loss, **common)
        cuda = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []
        with torch.random.fork_rng(devices=cuda):
            return atk(x, y)


# ----------------------------------------------------------------------------- AutoAttack

class AutoAttack(Attack):
    """Standard AutoAttack (Croce & Hein 2020), L∞: APGD-CE (100 steps), APGD-T (targeted DLR,
    100 steps, min(9, C−1) targets), FAB-T (100 steps, min(9, C−1) targets) and Square (5,000
    queries), each run through torchattacks on the examples that no earlier component fooled;
    per example the first adversarial that fools ``model`` is returned (else the input).

    Components that need more classes than the task's head has are left out and listed in
    ``params()["components"]``: the DLR losses of APGD-T need C ≥ 4 (so a 2-class task runs
    APGD-CE, FAB-T and Square). ``only`` restricts the suite to some of its components (to run
    or test one on its own); asking for one the head cannot run is refused with one line. Each
    component's seed is drawn from ``generator`` and it runs inside ``torch.random.fork_rng``,
    so a seeded call is repeatable and the global RNG is untouched."""

    def __init__(self, eps: float = 8 / 255, n_classes: int = 10, steps: int = 100, n_queries: int = 5000,
                 fold_bn: bool = True, only: Optional[Sequence[str]] = None):
        try:
            import torchattacks
        except ImportError:
            raise CmatError("AutoAttack (aa) needs torchattacks: pip install cmat[test]") from None
        self.eps = number("attack eps", eps, 0)
        self.n_classes = number("attack n_classes", n_classes, 1, integer=True)
        if self.n_classes < 2:
            raise CmatError("AutoAttack needs a head of at least 2 classes")
        self.steps = number("attack steps", steps, 1, integer=True)
        self.n_queries = number("attack n_queries", n_queries, 1, integer=True)
        self.fold_bn = bool(fold_bn)
        self._ta = torchattacks
        self._only = None
        if only is not None:
            unknown = [c for c in only if c not in AA_COMPONENTS]
            if unknown or not only:
                raise CmatError(f"AutoAttack components are {', '.join(AA_COMPONENTS)}; got {list(only)!r}")
            if "apgd-t" in only and self.n_classes < 4:
                raise CmatError(f"apgd-t needs a head of at least 4 classes, the head has {self.n_classes}")
            self._only = set(only)

    @property
    def components(self) -> list:
        """The components that run, in AutoAttack's order."""
        suite = ["apgd-ce"] + (["apgd-t"] if self.n_classes >= 4 else []) + ["fab-t", "square"]
        return suite if self._only is None else [c for c in suite if c in self._only]

    def params(self) -> dict:
        return {"attack": "AutoAttack", "eps": self.eps, "alpha": None, "steps": self.steps,
                "n_queries": self.n_queries, "n_classes": self.n_classes, "components": self.components}

    def _component(self, name: str, grad_model, seed: int):
        ta, targets = self._ta, min(9, self.n_classes - 1)
        if name == "apgd-ce":
            return ta.APGD(grad_model, norm="Linf", eps=self.eps, steps=self.steps, loss="ce", seed=seed)
        if name == "apgd-t":
            atk = ta.APGDT(grad_model, norm="Linf", eps=self.eps, steps=self.steps, n_classes=self.n_classes, seed=seed)
        elif name == "fab-t":
            atk = ta.FAB(grad_model, norm="Linf", eps=self.eps, steps=self.steps, multi_targeted=True,
                         n_classes=self.n_classes, seed=seed)
        else:
            return ta.Square(grad_model, norm="Linf", eps=self.eps, n_queries=self.n_queries, seed=seed)
        atk.n_target_classes = targets
        return atk

    def _run(self, model, grad_model, x, y, generator):
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(2 ** 31 - 1, (len(self.components),), generator=generator, device=device).tolist()
        x_adv = x.clone()
        with torch.no_grad():
            alive = (model(x).argmax(1) == y).nonzero().squeeze(1)
        cuda = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []
        for name, seed in zip(self.components, seeds):
            if alive.numel() == 0:
                break
            with torch.random.fork_rng(devices=cuda):
                cand = self._component(name, grad_model, int(seed))(x[alive], y[alive])
            # torchattacks returns points in the ball up to rounding; keep ours exactly inside it
            cand = (x[alive] + (cand - x[alive]).clamp(-self.eps, self.eps)).clamp(0, 1)
            with torch.no_grad():
                fooled = model(cand).argmax(1) != y[alive]
            x_adv[alive[fooled]] = cand[fooled]
            alive = alive[~fooled]
        return x_adv
