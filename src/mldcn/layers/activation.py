"""Activations by name, and the weight initialisation every layer shares."""

from __future__ import annotations

import math

import torch
from torch import nn

from mldcn.layers.flops import ACTIVATION_FLOPS

ACTIVATIONS = tuple(ACTIVATION_FLOPS)


class TwoSigmoid(nn.Module):
    """``2 * sigmoid(x)``: a gate in (0, 2) that equals 1 at x = 0 (MaskNet-style amplify/suppress)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sigmoid(x)


def make_activation(name: str) -> nn.Module:
    """Build an activation by name; see :data:`ACTIVATIONS` for the names."""
    factories = {
        "identity": nn.Identity,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "2sigmoid": TwoSigmoid,
        "softplus": nn.Softplus,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
    }
    if name not in factories:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(factories)}")
    return factories[name]()


def activation_preimage_of_one(name: str) -> float:
    """The input ``c`` with ``g(c) == 1``, so a mask ``g(c)`` starts as the identity.

    ``sigmoid`` never reaches 1; it starts at 0.5 (c = 0) and the following
    projection absorbs the factor.
    """
    return {
        "identity": 1.0,
        "relu": 1.0,
        "2sigmoid": 0.0,
        "softplus": math.log(math.e - 1.0),
        "sigmoid": 0.0,
        "tanh": math.atanh(0.999),
        "gelu": 1.0,
    }[name]


def init_linear(linear: nn.Linear) -> None:
    """Xavier-normal weights and zero bias (the FuxiCTR/BARS convention)."""
    nn.init.xavier_normal_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def xavier_normal_(tensor: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Xavier-normal for a weight stored in any layout (e.g. stacked experts ``[K, d, r]``)."""
    std = math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.normal_(0.0, std)
