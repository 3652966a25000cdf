"""Multi-layer perceptron: the DNN tower of every model here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mldcn.layers.activation import init_linear, make_activation
from mldcn.layers.dropout import Dropout
from mldcn.layers.flops import (
    BATCH_NORM,
    Flops,
    activation_flops,
    linear_flops,
    sum_flops,
)


class MLP(nn.Module):
    """``h_{i+1} = dropout(act(BN(W_i h_i + b_i)))`` for each hidden width.

    With ``hidden=()`` the MLP is the identity and ``out_dim == in_dim``. Batch norm
    and dropout follow FuxiCTR's ``MLP_Block`` order (Linear → BN → act → dropout),
    which the BARS DCNv2 recipe (400-400-400, BN, dropout 0.4) uses.

    Args:
        in_dim: input width.
        hidden: output width of each layer.
        activation: name from :data:`mldcn.layers.activation.ACTIVATIONS`.
        dropout: dropout probability after each layer (0 = none).
        batch_norm: batch norm after each Linear.

    Shape:
        ``[B, in_dim]`` → ``[B, hidden[-1]]``

    Example:
        >>> MLP(8, (16, 4))(torch.zeros(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.hidden = tuple(hidden)
        self.activation = activation
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        width = in_dim
        for out in self.hidden:
            linear = nn.Linear(width, out)
            init_linear(linear)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = out
        self.layers = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def flops(self) -> Flops:
        parts = []
        width = self.in_dim
        for out in self.hidden:
            parts.append(linear_flops(width, out))
            if self.batch_norm:
                parts.append(Flops(elementwise=BATCH_NORM * out))
            parts.append(activation_flops(self.activation, out))
            width = out
        return sum_flops(parts)
