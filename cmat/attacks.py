"""L∞ attacks on classifiers ``x ↦ logits`` that take images in [0, 1].

Threat model (pixel units; normalisation is the model's first layer):

- random start  x₀ = clip_[0,1](x + δ),  δ ~ U(−ε, ε)  (drawn from the caller's generator);
- step          x_{k+1} = clip_[0,1](Π_ε(x_k + α·sign ∇ₓL(f(x_k), y))),  Π_ε(z) = x + clamp(z − x, −ε, ε);
- losses        ``ce``: mean cross-entropy;  ``cw``: mean CW margin  max_{i≠y} z_i − z_y.

:class:`PGD` and :class:`FGSM` (one step; with a random start and α = 1.25ε it is the "fast"
training attack), :class:`AutoPGD` (APGD-CE / APGD-T through torchattacks) and
:func:`make_attack` (evaluation names such as ``pgd40``) are the public API.

Contract of every attack call ``atk(model, x, y, generator=None) -> x_adv``:

- ``x_adv`` is detached, in [0, 1] and within ε of ``x`` (up to one float rounding, ~6e-8);
- gradients are taken w.r.t. the input only (``torch.autograd.grad``): no parameter gets a
  ``.grad``; the model runs in eval mode (BN running statistics are used and never updated) and
  every submodule's ``training`` flag is restored afterwards, whatever it was;
- randomness comes from ``generator`` only (drawn on the generator's device, then moved to
  ``x``'s), so a call repeated with an equally seeded generator is bit-identical; ``None`` uses
  torch's global CPU generator.

Speed (the attack is the inner loop of adversarial training): the iterate is updated in place,
no host syncs inside the step loop, and by default gradients are computed on a copy of the
model with eval-mode BatchNorm folded into the preceding convolutions (:mod:`cmat.nn.fuse`;
measured 1.18× for VGG16-BN PGD-10 at batch 128 on CPU, ``scripts/bench_speed.py``). Folding
changes float rounding, not the attack; ``fold_bn=False`` computes through the unchanged model,
and is then bit-identical to torchattacks.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cmat.errors import CmatError
from cmat.nn.fuse import fold_batchnorm

LOSSES = ("ce", "cw")
ATTACK_FORMS = "clean, fgsm, pgdN, pgdN-cw, apgd-ce, apgd-t, aa, certified (N = steps, e.g. pgd10)"
CROSSING = 2.5  # an evaluation PGD-k must be able to travel CROSSING·ε: α·k ≥ 2.5ε


def sound_alpha(eps: float, alpha: float, steps: int) -> float:
    """The step size of an evaluation/validation PGD-``steps``: α' = max(α, 2.5·ε/steps).

    k steps of α' can cross the ε-ball (α'·k ≥ 2.5ε, the robustness library's convention);
    with the threat model's α alone, e.g. MNIST's α = 0.01, ε = 0.3, PGD-10 travels 0.1 < ε and
    is weaker than FGSM. Training attacks keep the preset's α (see ``cmat.config.validate``)."""
    return max(float(alpha), CROSSING * float(eps) / int(steps))


# ----------------------------------------------------------------------------- losses

def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example CW margin ``max_{i≠y} z_i − z_y`` (> 0 ⇒ the example is misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The attack objective per example: cross-entropy (``ce``) or CW margin (``cw``)."""
    return F.cross_entropy(logits, y, reduction="none") if loss == "ce" else cw_margin(logits, y)


def batch_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean of :func:`per_example_loss` (``ce`` is exactly ``F.cross_entropy``'s mean)."""
    return F.cross_entropy(logits, y) if loss == "ce" else cw_margin(logits, y).mean()


# ----------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def eval_mode(model):
    """Run with ``model`` in eval mode; restore every submodule's own ``training`` flag after."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def uniform_noise(x: torch.Tensor, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """δ ~ U(−ε, ε) shaped like ``x``, drawn on ``generator``'s device, returned on ``x``'s."""
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.empty(x.shape, dtype=x.dtype, device=device).uniform_(-eps, eps, generator=generator)
    return noise.to(x.device)


def _number(name: str, value, positive: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise CmatError(f"attack {name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return float(value)


def _count(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise CmatError(f"attack {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _fmt(v) -> str:
    """8/255 for multiples of 1/255, else the shortest float."""
    if isinstance(v, float) and v > 0 and abs(v * 255 - round(v * 255)) < 1e-9:
        return f"{round(v * 255)}/255"
    return repr(v)


class Attack:
    """Base class. ``__call__`` copies the inputs, checks they lie in [0, 1], switches the model to
    eval mode (restored on exit), builds ``grad_model`` (BN folded when ``fold_bn``, else the model
    itself) and calls ``_run(model, grad_model, x, y, generator)``: gradients go through
    ``grad_model``, decisions such as "is this example fooled" through ``model``."""

    fold_bn = True

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        with torch.inference_mode(False):
            x = x.detach().clone()
            y = y.detach().to(device=x.device, dtype=torch.long, copy=True)
            if x.numel():
                lo, hi = torch.aminmax(x)
                if lo < 0 or hi > 1:
                    raise CmatError(f"attack inputs must be images in [0, 1] (normalise inside the model), "
                                    f"got values in [{float(lo):.3g}, {float(hi):.3g}]")
            with eval_mode(model), torch.enable_grad():
                grad_model = model
                if self.fold_bn and isinstance(model, nn.Module):
                    plain = getattr(model, "plain_equivalent", None)  # masked nets export plain layers
                    grad_model = fold_batchnorm(plain() if plain is not None else model)
                return self._run(model, grad_model, x, y, generator).detach()

    def params(self) -> dict:
        """The attack's settings (``attack``, ``eps``, ``alpha``, ``steps``, ...); subclasses extend."""
        return {"attack": type(self).__name__}

    def __repr__(self) -> str:
        p = self.params()
        name = p.pop("attack")
        return f"{name}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in p.items()) + ")"


# ----------------------------------------------------------------------------- PGD / FGSM

def ascend(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, eps: float, alpha: float,
           steps: int, loss: str, project: bool = True) -> torch.Tensor:
    """``steps`` signed-gradient steps from ``x_adv`` (updated in place and returned):
    x_adv ← clip_[0,1](x + clamp(x_adv + α·sign ∇L − x, −ε, ε)); ``project=False`` skips the
    clamp to the ε-ball (a no-op in exact arithmetic when one step of α ≤ ε starts at x).
    The operation order matches torchattacks' PGD: through the same model the results are
    bit-identical to it."""
    sign, delta = torch.empty_like(x), (torch.empty_like(x) if project else None)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(batch_loss(model(x_adv), y, loss), x_adv)
        x_adv.requires_grad_(False)
        x_adv.add_(torch.sign(grad, out=sign), alpha=alpha)  # grad may be a broadcast view: no sign_
        if project:
            torch.sub(x_adv, x, out=delta).clamp_(-eps, eps)
            torch.add(x, delta, out=x_adv)
        x_adv.clamp_(0, 1)
    return x_adv


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018), L∞, ``steps`` steps of size ``alpha``.

    ``restarts`` > 1 repeats the attack from fresh random starts on the examples not yet fooled
    and keeps, per example, the first adversarial that fools the model (argmax ≠ y), otherwise
    the one of highest loss. Restart r uses the r-th draw from the generator (drawn for the whole
    batch), so restart 0 is exactly the ``restarts=1`` attack and more restarts are never weaker.
    """

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, restarts: int = 1, loss: str = "ce", fold_bn: bool = True):
        self.eps = _number("eps", eps, positive=False)
        self.alpha = _number("alpha", alpha, positive=True)
        self.steps = _count("steps", steps)
        self.restarts = _count("restarts", restarts)
        if loss not in LOSSES:
            raise CmatError(f"attack loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if self.restarts > 1 and not random_start:
            raise CmatError("PGD restarts > 1 need random_start=True (otherwise every restart is the same)")
        self.random_start, self.loss, self.fold_bn = bool(random_start), loss, bool(fold_bn)

    def params(self) -> dict:
        return {"attack": "PGD", "eps": self.eps, "alpha": self.alpha, "steps": self.steps,
                "random_start": self.random_start, "restarts": self.restarts, "loss": self.loss}

    def _start(self, x, generator):
        if not self.random_start:
            return x.clone()
        return (x + uniform_noise(x, self.eps, generator)).clamp_(0, 1)

    def _ascend(self, grad_model, x, y, start):
        return ascend(grad_model, x, y, start, self.eps, self.alpha, self.steps, self.loss)

    @torch.no_grad()
    def _judge(self, model, x_adv, y):
        logits = model(x_adv)
        return logits.argmax(1) != y, per_example_loss(logits, y, self.loss)

    def _run(self, model, grad_model, x, y, generator):
        x_adv = self._ascend(grad_model, x, y, self._start(x, generator))
        if self.restarts == 1:
            return x_adv
        fooled, best = self._judge(model, x_adv, y)
        for _ in range(1, self.restarts):
            start = self._start(x, generator)  # whole-batch draw: the stream ignores who is fooled
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            cand = self._ascend(grad_model, x[idx], y[idx], start[idx])
            hit, loss = self._judge(model, cand, y[idx])
            take = hit | (loss > best[idx])
            keep = idx[take]
            x_adv[keep], best[keep], fooled[keep] = cand[take], loss[take], hit[take]
        return x_adv


class FGSM(PGD):
    """Fast gradient sign method: one step of size α (default ε) from x, or — ``random_start`` —
    from x + U(−ε, ε) (Wong et al. 2020 "fast" AT, with α = 1.25ε), projected to the ε-ball.
    Without a random start and α ≤ ε the projection is skipped (it cannot bind), which keeps the
    result bit-identical to ``torchattacks.FGSM``."""

    def __init__(self, eps: float = 8 / 255, random_start: bool = False, alpha: Optional[float] = None,
                 loss: str = "ce", fold_bn: bool = True):
        super().__init__(eps, eps if alpha is None else alpha, 1, random_start, 1, loss, fold_bn)

    def params(self) -> dict:
        return {"attack": "FGSM", "eps": self.eps, "alpha": self.alpha, "steps": 1,
                "random_start": self.random_start, "loss": self.loss}

    def _ascend(self, grad_model, x, y, start):
        project = self.random_start or self.alpha > self.eps
        return ascend(grad_model, x, y, start, self.eps, self.alpha, 1, self.loss, project)


# ----------------------------------------------------------------------------- APGD

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")


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
        self.eps = _number("eps", eps, positive=False)
        self.steps = _count("steps", steps)
        self.restarts = _count("restarts", restarts)
        self.rho = _number("rho", rho, positive=True)
        if loss not in APGD_LOSSES:
            raise CmatError(f"APGD loss must be one of {', '.join(APGD_LOSSES)}, got {loss!r}")
        need = {"ce": 2, "dlr": 3, "dlr-targeted": 4}[loss]
        if loss == "dlr-targeted" and n_classes is None:
            raise CmatError("apgd-t needs n_classes (the task's head size)")
        if n_classes is not None and _count("n_classes", n_classes) < need:
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
    APGD-CE, FAB-T and Square). Each component's seed is drawn from ``generator`` and it runs
    inside ``torch.random.fork_rng``, so a seeded call is repeatable and the global RNG is
    untouched."""

    def __init__(self, eps: float = 8 / 255, n_classes: int = 10, steps: int = 100, n_queries: int = 5000,
                 fold_bn: bool = True):
        try:
            import torchattacks
        except ImportError:
            raise CmatError("AutoAttack (aa) needs torchattacks: pip install cmat[test]") from None
        self.eps = _number("eps", eps, positive=False)
        self.n_classes = _count("n_classes", n_classes)
        if self.n_classes < 2:
            raise CmatError("AutoAttack needs a head of at least 2 classes")
        self.steps = _count("steps", steps)
        self.n_queries = _count("n_queries", n_queries)
        self.fold_bn = bool(fold_bn)
        self._ta = torchattacks

    @property
    def components(self) -> list:
        return ["apgd-ce"] + (["apgd-t"] if self.n_classes >= 4 else []) + ["fab-t", "square"]

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


# ----------------------------------------------------------------------------- names

_PGD_NAME = re.compile(r"pgd(\d+)(-cw)?")


def make_attack(name: str, eps: float, alpha: float, n_classes: Optional[int] = None,
                alphas: Optional[dict] = None) -> Optional[Attack]:
    """The attack for an evaluation name: ``clean`` → None, ``fgsm`` (one step of ε, no random
    start), ``pgdN`` / ``pgdN-cw`` (N steps, random start, CE / CW loss, step
    ``alphas[name]`` if the user set one, else :func:`sound_alpha` (ε, α, N)), ``apgd-ce``
    (100 steps), ``apgd-t`` (100 steps, targeted DLR over ``n_classes − 1`` targets), ``aa``
    (:class:`AutoAttack` for a head of ``n_classes``)."""
    key = str(name).strip().lower()
    alphas = alphas or {}
    if key == "clean":
        return None
    if key == "fgsm":
        return FGSM(eps)
    match = _PGD_NAME.fullmatch(key)
    if match:
        steps = int(match[1])
        step = alphas[key] if key in alphas else sound_alpha(_number("eps", eps, False),
                                                             _number("alpha", alpha, True), max(steps, 1))
        return PGD(eps, step, steps, random_start=True, loss="cw" if match[2] else "ce")
    if key == "aa":
        return AutoAttack(eps, n_classes=n_classes if n_classes is not None else 10)
    if key == "apgd-ce":
        return AutoPGD(eps, loss="ce")
    if key == "apgd-t":
        return AutoPGD(eps, loss="dlr-targeted", n_classes=n_classes)
    if key == "certified":
        from cmat.verify import CertifiedCheck

        return CertifiedCheck(_number("eps", eps, False))
    raise CmatError(f"unknown attack {name!r}; valid forms: {ATTACK_FORMS}")
