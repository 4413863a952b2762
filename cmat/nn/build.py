"""Rebuild a network (plain or masked) from the ``spec`` stored beside its weights."""
from __future__ import annotations

from torch import nn

from cmat.nn.hat import HatNet
from cmat.nn.masked import MaskedMultiHeadNet
from cmat.nn.multihead import MultiHeadNet


def build_network(spec: dict) -> nn.Module:
    """Rebuild a :class:`MultiHeadNet` (or a masked network) from its ``spec``; the caller loads
    the weights (and, for masked networks, the owner and piggyback masks)."""
    if spec.get("hat"):
        net = HatNet(spec["arch"], spec["in_channels"], spec["input_size"], spec.get("width", 1.0))
        for t in spec["tasks"]:
            net.add_task(t["task"], t["num_classes"], t["mean"], t["std"])
            for g in net.gates():
                g.finish(t["task"])  # the gates themselves come with the state dict
        return net
    if spec.get("masked"):
        net = MaskedMultiHeadNet(spec["arch"], spec["in_channels"], spec["input_size"], spec.get("width", 1.0))
        for t in spec["tasks"]:
            net.add_task(t["task"], t["num_classes"], t["mean"], t["std"], t["multiplier"])
        return net
    return MultiHeadNet(spec["arch"], spec["in_channels"], spec["input_size"], spec["head_sizes"],
                        spec["means"], spec["stds"], spec.get("width", 1.0), spec.get("norm_layer", "batchnorm"))
