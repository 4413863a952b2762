"""Evaluation attack names (``clean``, ``fgsm``, ``pgd40``, ``aa``, ``certified`` ...) → attacks."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from cmat.attacks.apgd import AutoAttack, AutoPGD
from cmat.checks import number
from cmat.attacks.base import Attack, sound_alpha
from cmat.attacks.pgd import FGSM, PGD
from cmat.bounds import CertifiedCheck
from cmat.errors import CmatError

VAL_CLEAN_PASS = 1 / 3  # a forward pass without backward, in passes


@dataclass(frozen=True)
class AttackForm:
    """One family of evaluation names, and every fact about it in one place: the names it takes
    (``pattern``, matched whole, lower case; ``example`` in help texts), how one is built
    (``build(match, eps, alpha, n_classes, alphas)``), its column label and sort key, its cost in
    forward+backward passes per attacked image for a head of ``n_classes`` (the estimate; an upper
    bound for AutoAttack), its colour in plots (``None``: the palette's next) and a help line."""

    pattern: str
    example: str
    build: Callable
    label: Callable
    rank: Callable
    passes: Callable
    colour: Callable = lambda m: None
    help: str = ""


def _pgd(m, eps, alpha, n_classes, alphas):
    steps = int(m[1])
    eps_ok, alpha_ok = number("attack eps", eps, 0), number("attack alpha", alpha, 0, lo_open=True)
    step = alphas[m[0]] if m[0] in alphas else sound_alpha(eps_ok, alpha_ok, max(steps, 1))
    return PGD(eps, step, steps, random_start=True, loss="cw" if m[2] else "ce")


def _aa_passes(n_classes: int) -> float:
    targets = min(9, n_classes - 1)
    return 101.0 + (101.0 * targets if n_classes >= 4 else 0) + 101.0 * targets + 5000 * VAL_CLEAN_PASS


FORMS = (
    AttackForm("clean", "clean", lambda m, *a: None, lambda m: "clean", lambda m: (0, 0, False),
               lambda m, n: 0.0, lambda m: "#0072B2", "no attack: the test images as they are"),
    AttackForm("fgsm", "fgsm", lambda m, eps, *a: FGSM(eps), lambda m: "FGSM", lambda m: (1, 0, False),
               lambda m, n: 2.0, lambda m: "#56B4E9", "one signed-gradient step of ε, no random start"),
    AttackForm(r"pgd(\d+)(-cw)?", "pgdN, pgdN-cw", _pgd, lambda m: f"PGD-{m[1]}" + (" (CW)" if m[2] else ""),
               lambda m: (2, int(m[1]), bool(m[2])), lambda m, n: int(m[1]) + 1.0,
               lambda m: None if m[2] else {"10": "#E69F00", "40": "#D55E00"}.get(m[1]),
               "N PGD steps from a random start, CE (or CW margin) loss, α with α·N ≥ 2.5ε"),
    AttackForm("apgd-ce", "apgd-ce", lambda m, eps, *a: AutoPGD(eps, loss="ce"), lambda m: "APGD-CE",
               lambda m: (3, 1, False), lambda m, n: 101.0, help="APGD-CE, 100 steps (torchattacks)"),
    # APGD-CE with R random restarts: an image is broken if any restart breaks it
    AttackForm(r"apgd-ce-r([1-9]\d*)", "apgd-ce-rR", lambda m, eps, *a: AutoPGD(eps, loss="ce", restarts=int(m[1])),
               lambda m: f"APGD-CE ×{m[1]}", lambda m: (3, int(m[1]), False), lambda m, n: 101.0 * int(m[1]),
               help="APGD-CE with R random restarts (broken if any restart breaks it)"),
    AttackForm("apgd-t", "apgd-t", lambda m, eps, a, n, al: AutoPGD(eps, loss="dlr-targeted", n_classes=n),
               lambda m: "APGD-T", lambda m: (4, 0, False), lambda m, n: 101.0 * min(9, n - 1),
               help="targeted APGD on the DLR loss over min(9, C − 1) targets"),
    AttackForm("aa", "aa", lambda m, eps, a, n, al: AutoAttack(eps, n_classes=n if n is not None else 10),
               lambda m: "AA", lambda m: (5, 0, False), lambda m, n: _aa_passes(n), lambda m: "#CC79A7",
               "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) sized to the head"),
    # a proof, not an attack: bound propagation, not counted in passes
    AttackForm("certified", "certified", lambda m, eps, *a: CertifiedCheck(number("attack eps", eps, 0)),
               lambda m: "certified", lambda m: (9, 0, False), lambda m, n: 0.0, lambda m: "#009E73",
               "a proof, not an attack: CROWN ∩ IBP certifies the whole ball (never part of worst)"),
)
ATTACK_FORMS = (", ".join(f.example for f in FORMS)
                + " (N = steps, e.g. pgd10; R = random restarts, e.g. apgd-ce-r5)")


def find_form(name: str):
    """``(form, match)`` of an evaluation name, or ``(None, None)``."""
    key = str(name).strip().lower()
    for form in FORMS:
        m = re.fullmatch(form.pattern, key)
        if m:
            return form, m
    return None, None


def check_attack_name(name: str) -> str:
    """``name`` when it is an evaluation attack name (whatever the head size), else one
    :class:`CmatError` line listing the valid forms. Builds nothing: for checks made before the
    head sizes are known (``apgd-t`` and ``aa`` are sized per task by :func:`make_attack`)."""
    if find_form(name)[0] is None:
        raise CmatError(f"unknown attack {name!r}; valid forms: {ATTACK_FORMS}")
    return name


def attack_label(name: str) -> str:
    """A table's column label for an evaluation name: ``pgd40-cw`` → ``PGD-40 (CW)``, ``apgd-ce-r5``
    → ``APGD-CE ×5`` (five restarts); ``worst`` and unknown names are returned as they are."""
    form, m = find_form(name)
    return form.label(m) if form is not None else name


def column_rank(name: str) -> tuple:
    """Sort key of a table's columns: clean, FGSM, PGD by steps (CE before CW), APGD-CE (by
    restarts), APGD-T, AA, then ``worst`` and ``certified`` last; unknown names before ``worst``."""
    form, m = find_form(name)
    if form is not None:
        return form.rank(m)
    return (8, 0, False) if str(name).strip().lower() == "worst" else (7, 0, False)


def attack_passes(name: str, n_classes: int) -> float:
    """Forward+backward passes per attacked image of an evaluation name (the cost estimate)."""
    form, m = find_form(name)
    if form is None:
        raise CmatError(f"unknown attack {name!r}; valid forms: {ATTACK_FORMS}")
    return form.passes(m, n_classes)


def form_colour(name: str) -> Optional[str]:
    """The colour plots draw an evaluation name in, or ``None`` (the palette decides)."""
    form, m = find_form(name)
    return form.colour(m) if form is not None else None


def make_attack(name: str, eps: float, alpha: float, n_classes: Optional[int] = None,
                alphas: Optional[dict] = None) -> Optional[Attack]:
    """The attack for an evaluation name: ``clean`` → None, ``fgsm`` (one step of ε, no random
    start), ``pgdN`` / ``pgdN-cw`` (N steps, random start, CE / CW loss, step
    ``alphas[name]`` if the user set one, else :func:`sound_alpha` (ε, α, N)), ``apgd-ce``
    (100 steps), ``apgd-ce-rR`` (the same with R random restarts), ``apgd-t`` (100 steps, targeted DLR
    over ``n_classes − 1`` targets), ``aa`` (:class:`AutoAttack` for a head of ``n_classes``),
    ``certified`` (a proof by bounds, :class:`CertifiedCheck`)."""
    form, m = find_form(name)
    if form is None:
        raise CmatError(f"unknown attack {name!r}; valid forms: {ATTACK_FORMS}")
    return form.build(m, eps, alpha, n_classes, alphas or {})
