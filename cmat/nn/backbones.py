"""Backbone feature extractors, built from layer factories, and their registry ``ARCHS``.

Every network takes images in [0, 1]. :class:`Normalize` (per task: each task has its own
statistics) is the first layer, so attacks and ε live in pixel space. Backbones are built from
layer *factories* (``conv``, ``linear``, ``bn``) so masked layers can replace the plain ones
without a second copy of each architecture.

Architectures (``ARCHS``):
- ``vgg16``: CPG's VGG16-BN for 32×32 inputs: cfg D, 3×3 convolutions without bias → BN →
  ReLU, five max-pools, then FC 512→4096→4096 with ReLU (33.6M weights), per-task heads.
- ``resnet18``: ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool).
- ``smallcnn``: four 3×3 conv-BN-ReLU layers (32, 32, 64, 64 channels × width) with two
  max-pools, a 2×2 average pool, and FC → 128; for 8×8, 16×16 and 28×28 inputs.
- ``cnn-ibp``: the small network of certified training (Gowal et al. 2018; Shi et al. 2021's
  CNN-3 family): 3×3 conv → 32 (padding 1), ReLU, 3×3 conv → 64 stride 2 (padding 1), ReLU,
  FC → 128, ReLU (channels × width), with biases and *no* BatchNorm or max-pool, whose interval
  bounds stay tight; for 8×8 inputs the FC has 64·4·4 = 1024 inputs.
- ``mlp``: SHIELD's target network (Krukowski et al. 2025; the MLP of GPM and DGP's permuted
  MNIST): flatten, FC → 256, ReLU, FC → 256, ReLU (units × width), with biases and no
  BatchNorm; 1024-256-256 on 32×32 inputs (784-256-256 on 28×28). It has no BN, so the ``bn``
  factory adds nothing, except a factory that offers ``unit_layer(n)`` (ANP-VS's beta-Bernoulli
  masks): that layer follows each hidden FC, where a BN would stand.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from cmat.nn.beta_bernoulli import masked_bn

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _conv_bn_relu(conv, bn, cin, cout):
    return [conv(cin, cout, 3, padding=1, bias=False), bn(cout), nn.ReLU(inplace=True)]


def vgg16_features(in_ch: int, width: float, conv, linear, bn, input_size: int = 32) -> tuple:
    layers, c = [], in_ch
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            out = int(round(v * width))
            layers += _conv_bn_relu(conv, bn, c, out)
            c = out
    spatial = max(input_size // 32, 1)
    fc = int(round(4096 * width))
    layers += [nn.Flatten(), linear(c * spatial * spatial, fc), nn.ReLU(inplace=True),
               linear(fc, fc), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), fc


def smallcnn_features(in_ch: int, width: float, conv, linear, bn, input_size: int = 8) -> tuple:
    c1, c2, f = int(round(32 * width)), int(round(64 * width)), int(round(128 * width))
    layers = (_conv_bn_relu(conv, bn, in_ch, c1) + _conv_bn_relu(conv, bn, c1, c1) + [nn.MaxPool2d(2)]
              + _conv_bn_relu(conv, bn, c1, c2) + _conv_bn_relu(conv, bn, c2, c2))
    if input_size >= 16:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), linear(c2 * 4, f), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), f


def cnn_ibp_features(in_ch: int, width: float, conv, linear, bn, input_size: int = 8) -> tuple:
    c1, c2, f = int(round(32 * width)), int(round(64 * width)), int(round(128 * width))
    side = (input_size + 1) // 2  # 3×3, stride 2, padding 1
    layers = [conv(in_ch, c1, 3, padding=1, bias=True), nn.ReLU(inplace=True),
              conv(c1, c2, 3, stride=2, padding=1, bias=True), nn.ReLU(inplace=True),
              nn.Flatten(), linear(c2 * side * side, f), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), f


MLP_HIDDEN = (256, 256)


def mlp_features(in_ch: int, width: float, conv, linear, bn, input_size: int = 32) -> tuple:
    unit_layer = getattr(bn, "unit_layer", None)
    layers, d = [nn.Flatten()], in_ch * input_size * input_size
    for h in MLP_HIDDEN:
        out = int(round(h * width))
        layers.append(linear(d, out))
        if unit_layer is not None:
            layers.append(unit_layer(out))
        layers.append(nn.ReLU(inplace=True))
        d = out
    return nn.Sequential(*layers), d


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus (projected) shortcut, then ReLU."""

    def __init__(self, cin, cout, stride, conv, bn):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = bn(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), bn(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet18_features(in_ch: int, width: float, conv, linear, bn, input_size: int = 32) -> tuple:
    w = [int(round(c * width)) for c in (64, 128, 256, 512)]
    layers = [conv(in_ch, w[0], 3, padding=1, bias=False), bn(w[0]), nn.ReLU(inplace=True)]
    cin = w[0]
    for i, cout in enumerate(w):
        for b in range(2):
            layers.append(BasicBlock(cin, cout, 2 if (b == 0 and i > 0) else 1, conv, bn))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


def norm_layer_factory(kind: str) -> Callable:
    """``batchnorm`` → BatchNorm2d; ``beta-bernoulli`` → BatchNorm2d followed by ANP-VS's
    per-channel beta-Bernoulli mask (:mod:`cmat.baselines.anp_vs`)."""
    if kind == "batchnorm":
        return nn.BatchNorm2d
    if kind == "beta-bernoulli":
        return masked_bn
    raise ValueError(f"unknown norm layer {kind!r}")


ARCHS: dict = {"vgg16": vgg16_features, "resnet18": resnet18_features, "smallcnn": smallcnn_features,
               "cnn-ibp": cnn_ibp_features, "mlp": mlp_features}
