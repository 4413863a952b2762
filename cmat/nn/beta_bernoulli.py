"""Beta-Bernoulli channel masks (Lee et al. 2018), the layer ANP-VS prunes with.

Every BN output channel (every hidden unit of the BN-free mlp) gets a multiplicative mask:
π ~ Beta(α₀ = 1e-4, β₀ = 1) prior, a Kumaraswamy(a, b) posterior sampled by
reparameterisation, z ~ RelaxedBernoulli(π) with temperature τ = 0.1 while training; at test time
z = E[π]·1[E[π] > 1e-3] (channels at or below 1e-3 are pruned). A network layer (backbones build it
by name, ``beta-bernoulli``); the method that trains it lives in :mod:`baselines.anp_vs`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cmat.nn.layers import ChannelScale

PRIOR_ALPHA, PRIOR_BETA = 1e-4, 1.0
TEMPERATURE = 0.1
PRUNE_AT = 1e-3
EULER = 0.5772156649015329


def kumaraswamy_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E[π] = b·B(1 + 1/a, b) for π ~ Kumaraswamy(a, b)."""
    return b * torch.exp(torch.lgamma(1 + 1 / a) + torch.lgamma(b) - torch.lgamma(1 + 1 / a + b))


def kl_kumaraswamy_beta(a, b, alpha=PRIOR_ALPHA, beta=PRIOR_BETA, terms: int = 10) -> torch.Tensor:
    """KL(Kumaraswamy(a, b) ‖ Beta(α, β)), Nalisnick & Smyth (2017), Taylor series to ``terms``."""
    log_beta_prior = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    kl = (a - alpha) / a * (-EULER - torch.digamma(b) - 1 / b) + torch.log(a * b) + log_beta_prior - (b - 1) / b
    series = 0
    for m in range(1, terms + 1):
        series = series + torch.exp(torch.lgamma(m / a) + torch.lgamma(b) - torch.lgamma(m / a + b)) / (m + a * b)
    return kl + (beta - 1) * b * series


class BetaBernoulliMask(nn.Module):
    """Per-channel multiplicative mask with a Kumaraswamy posterior (see module docstring)."""

    def __init__(self, channels: int):
        super().__init__()
        # a = 9, b = 1 → E[π] = 0.9 at the start; log-parameterised so Adam moves them by factors
        self.log_a = nn.Parameter(torch.full((channels,), math.log(9.0)))
        self.log_b = nn.Parameter(torch.zeros(channels))
        self.last = None

    def ab(self):
        return self.log_a.clamp(-8, 8).exp(), self.log_b.clamp(-8, 8).exp()

    def expected(self) -> torch.Tensor:
        return kumaraswamy_mean(*self.ab())

    def bound_layers(self) -> list:
        """The test-time mask (expected keep probability, pruned below ``PRUNE_AT``) as a channel
        scale for :mod:`cmat.bounds`; not differentiated."""
        e = self.expected().detach()
        return [ChannelScale(e * (e > PRUNE_AT))]

    def kl(self) -> torch.Tensor:
        return kl_kumaraswamy_beta(*self.ab()).sum()

    def forward(self, x):
        a, b = self.ab()
        if self.training:
            u = torch.rand(x.shape[0], a.numel(), device=x.device).clamp(1e-6, 1 - 1e-6)
            pi = (1 - (1 - u) ** (1 / b)) ** (1 / a)
            pi = pi.clamp(1e-6, 1 - 1e-6)
            v = torch.rand_like(pi).clamp(1e-6, 1 - 1e-6)
            z = torch.sigmoid((torch.log(pi) - torch.log1p(-pi) + torch.log(v) - torch.log1p(-v)) / TEMPERATURE)
        else:
            e = kumaraswamy_mean(a, b)
            z = (e * (e > PRUNE_AT)).expand(x.shape[0], -1)
        out = x * z.view(z.shape + (1,) * (x.dim() - 2))  # channels of N×C×H×W, units of N×C
        self.last = out
        return out


def masked_bn(channels: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(channels), BetaBernoulliMask(channels))


# What a backbone without BatchNorm (the mlp) puts after each hidden linear layer: the mask alone.
masked_bn.unit_layer = BetaBernoulliMask
