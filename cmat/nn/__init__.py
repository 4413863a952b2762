"""Networks: normalisation layer, backbones, the multi-head container and masked networks.

Modules, bottom up: ``layers`` (Normalize), ``beta_bernoulli`` (ANP-VS channel masks),
``backbones`` (feature extractors, ``ARCHS``), ``fuse`` (BN folding), ``multihead``
(MultiHeadNet, TaskView), ``mask_algebra`` and ``masked_layers`` (masked layers),
``masked`` (MaskedMultiHeadNet), ``build`` (rebuild from a stored spec).
"""
from cmat.nn.backbones import ARCHS  # noqa: F401
from cmat.nn.build import build_network  # noqa: F401
from cmat.nn.layers import Normalize  # noqa: F401
from cmat.nn.multihead import MultiHeadNet, TaskView  # noqa: F401
