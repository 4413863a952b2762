"""Evaluation attack names (``clean``, ``fgsm``, ``pgd40``, ``aa``, ``certified`` ...) → attacks."""
from __future__ import annotations

import re
from typing import Optional

from cmat.attacks.apgd import AutoAttack, AutoPGD
from cmat.checks import number
from cmat.attacks.base import Attack, sound_alpha
from cmat.attacks.pgd import FGSM, PGD
from cmat.bounds import CertifiedCheck
from cmat.errors import CmatError

ATTACK_FORMS = ("clean, fgsm, pgdN, pgdN-cw, apgd-ce, apgd-ce-rR, apgd-t, aa, certified "
                "(N = steps, e.g. pgd10; R = random restarts, e.g. apgd-ce-r5)")
PGD_NAME = re.compile(r"pgd(\d+)(-cw)?")
APGD_RESTARTS = re.compile(r"apgd-ce-r([1-9]\d*)")
FIXED_NAMES = ("clean", "fgsm", "apgd-ce", "apgd-t", "aa", "certified")


def check_attack_name(name: str) -> str:
    """``name`` when it is an evaluation attack name (whatever the head size), else one
    :class:`CmatError` line listing the valid forms. Builds nothing: for checks made before the
    head sizes are known (``apgd-t`` and ``aa`` are sized per task by :func:`make_attack`)."""
    key = str(name).strip().lower()
    if key in FIXED_NAMES or PGD_NAME.fullmatch(key) or APGD_RESTARTS.fullmatch(key):
        return name
    raise CmatError(f"unknown attack {name!r}; valid forms: {ATTACK_FORMS}")


def attack_label(name: str) -> str:
    """A table's column label for an evaluation name: ``pgd40-cw`` → ``PGD-40 (CW)``, ``apgd-ce-r5``
    → ``APGD-CE ×5`` (five restarts); ``worst`` and unknown names are returned as they are."""
    key = str(name).strip().lower()
    fixed = {"clean": "clean", "fgsm": "FGSM", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "aa": "AA"}
    if key in fixed:
        return fixed[key]
    if match := PGD_NAME.fullmatch(key):
        return f"PGD-{match[1]}" + (" (CW)" if match[2] else "")
    if match := APGD_RESTARTS.fullmatch(key):
        return f"APGD-CE ×{match[1]}"
    return name


def column_rank(name: str) -> tuple:
    """Sort key of a table's columns: clean, FGSM, PGD by steps (CE before CW), APGD-CE (by
    restarts), APGD-T, AA, then ``worst`` and ``certified`` last; unknown names before ``worst``."""
    key = str(name).strip().lower()
    if match := PGD_NAME.fullmatch(key):
        return (2, int(match[1]), bool(match[2]))
    if match := APGD_RESTARTS.fullmatch(key):
        return (3, int(match[1]), False)
    rank = {"clean": 0, "fgsm": 1, "apgd-ce": 3, "apgd-t": 4, "aa": 5, "worst": 8, "certified": 9}
    return (rank.get(key, 7), 1 if key == "apgd-ce" else 0, False)


def make_attack(name: str, eps: float, alpha: float, n_classes: Optional[int] = None,
                alphas: Optional[dict] = None) -> Optional[Attack]:
    """The attack for an evaluation name: ``clean`` → None, ``fgsm`` (one step of ε, no random
    start), ``pgdN`` / ``pgdN-cw`` (N steps, random start, CE / CW loss, step
    ``alphas[name]`` if the user set one, else :func:`sound_alpha` (ε, α, N)), ``apgd-ce``
    (100 steps), ``apgd-ce-rR`` (the same with R random restarts), ``apgd-t`` (100 steps, targeted DLR
    over ``n_classes − 1`` targets), ``aa`` (:class:`AutoAttack` for a head of ``n_classes``)."""
    key = str(name).strip().lower()
    alphas = alphas or {}
    if key == "clean":
        return None
    if key == "fgsm":
        return FGSM(eps)
    match = PGD_NAME.fullmatch(key)
    if match:
        steps = int(match[1])
        eps_ok, alpha_ok = number("attack eps", eps, 0), number("attack alpha", alpha, 0, lo_open=True)
        step = alphas[key] if key in alphas else sound_alpha(eps_ok, alpha_ok, max(steps, 1))
        return PGD(eps, step, steps, random_start=True, loss="cw" if match[2] else "ce")
    if key == "aa":
        return AutoAttack(eps, n_classes=n_classes if n_classes is not None else 10)
    if key == "apgd-ce":
        return AutoPGD(eps, loss="ce")
    match = APGD_RESTARTS.fullmatch(key)
    if match:  # APGD-CE with R random restarts: an image is broken if any restart breaks it
        return AutoPGD(eps, loss="ce", restarts=int(match[1]))
    if key == "apgd-t":
        return AutoPGD(eps, loss="dlr-targeted", n_classes=n_classes)
    if key == "certified":
        return CertifiedCheck(number("attack eps", eps, 0))
    raise CmatError(f"unknown attack {name!r}; valid forms: {ATTACK_FORMS}")
