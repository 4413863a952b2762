"""Training objectives: how one minibatch becomes a loss (contract in :mod:`cmat.objectives.base`).

Importing the package registers the built-in objectives: ``standard``, ``pgd``, ``trades``,
``fast``, ``free`` (:mod:`cmat.objectives.adversarial`) and ``ibp``, ``crown-ibp``
(:mod:`cmat.objectives.certified`). A new objective subclasses :class:`Objective` and is
decorated with :func:`register_objective`.
"""
from cmat.objectives import adversarial, certified  # noqa: F401  (registers the built-in objectives)
from cmat.objectives.base import (  # noqa: F401
                                  OBJECTIVES,
                                  BatchStatsView,
                                  Objective,
                                  frozen_bn_batch_stats,
                                  make_objective,
                                  objective_names,
                                  register_objective,
)
