"""Networks: normalisation layer, backbones and the multi-head container."""
from cmat.nn.backbones import (  # noqa: F401
    ARCHS,
    MultiHeadNet,
    Normalize,
    TaskView,
    build_network,
)
