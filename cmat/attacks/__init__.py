"""L∞ attacks on classifiers ``x ↦ logits`` taking images in [0, 1], one per module.

``base`` (the contract every attack keeps, losses, :class:`Attack`), ``pgd`` (:class:`PGD`,
:class:`FGSM`), ``apgd`` (:class:`AutoPGD`, :class:`AutoAttack` through torchattacks) and
``factory`` (:func:`make_attack`: evaluation names such as ``pgd40`` → attacks).
"""
from cmat.attacks.apgd import APGD_LOSSES, AutoAttack, AutoPGD  # noqa: F401
from cmat.attacks.base import (  # noqa: F401
                               CROSSING,
                               LOSSES,
                               Attack,
                               batch_loss,
                               cw_margin,
                               eval_mode,
                               per_example_loss,
                               sound_alpha,
                               uniform_noise,
)
from cmat.attacks.factory import ATTACK_FORMS, check_attack_name, make_attack  # noqa: F401
from cmat.attacks.pgd import FGSM, PGD, ascend  # noqa: F401
