"""Heads: how an interaction module's output and the DNN tower become logits.

DCNv2 combines its cross network with a DNN in two ways, and every family here
uses the same two, so that a matched-FLOPs comparison differs only in the
interaction module:

    parallel:  logits = W [h ; MLP(x0)] + b      (DCNv2 parallel, BARS DCNv2)
    stacked:   logits = W MLP(h) + b             (DCNv2 stacked, ParallelMaskNet)

where ``h = interaction(embedding)``, ``x0`` is the flattened embedding and ``W``
has one row per output (``num_outputs``, the T tasks of a single-task head: one
shared tower, one logit each). Multi-task heads with a tower per task are in
:mod:`mldcn.layers.multitask`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mldcn.layers.activation import init_linear
from mldcn.layers.flops import Flops, linear_flops
from mldcn.layers.mlp import MLP


class ParallelHead(nn.Module):
    """``logits = W [h ; MLP(x0)] + b``.

    Args:
        interaction_dim: width of h.
        input_dim: d, width of x0.
        hidden, activation, dropout, batch_norm: the DNN tower on x0 (see :class:`MLP`).
        num_outputs: rows of ``W``: logits per example.

    Shape:
        h ``[B, interaction_dim]``, x0 ``[B, d]`` → logits ``[B, num_outputs]``
    """

    def __init__(
        self,
        interaction_dim: int,
        input_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        num_outputs: int = 1,
    ) -> None:
        super().__init__()
        self.deep = MLP(input_dim, hidden, activation, dropout, batch_norm)
        self.deep_enabled = bool(hidden)
        width = interaction_dim + (self.deep.out_dim if self.deep_enabled else 0)
        self.output = nn.Linear(width, num_outputs)
        init_linear(self.output)

    def forward(self, h: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if self.deep_enabled:
            h = torch.cat([h, self.deep(x0)], dim=-1)  # [B, h + hidden[-1]]
        return self.output(h)  # [B, num_outputs]

    def flops(self) -> Flops:
        deep = self.deep.flops() if self.deep_enabled else Flops()
        return deep + linear_flops(self.output.in_features, self.output.out_features)


class StackedHead(nn.Module):
    """``logits = W MLP(h) + b``; with ``hidden=()`` a linear read-out of h.

    Shape:
        h ``[B, interaction_dim]``, x0 (unused) → logits ``[B, num_outputs]``
    """

    def __init__(
        self,
        interaction_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        num_outputs: int = 1,
    ) -> None:
        super().__init__()
        self.deep = MLP(interaction_dim, hidden, activation, dropout, batch_norm)
        self.output = nn.Linear(self.deep.out_dim, num_outputs)
        init_linear(self.output)

    def forward(self, h: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.output(self.deep(h))  # [B, num_outputs]

    def flops(self) -> Flops:
        return self.deep.flops() + linear_flops(self.output.in_features, self.output.out_features)


class FlattenFields(nn.Module):
    """No explicit interaction: ``h = x0``, the flattened embedding (DNN and LR models).

    Shape:
        ``[B, F, D]`` → ``[B, F * D]``
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def flops(self) -> Flops:
        return Flops()
