"""WuKong (Zhang et al., Meta, "Wukong: Towards a Scaling Law for Large-Scale
Recommendation", ICML 2024, arXiv 2403.02545).

A stack of interaction layers on the field embeddings, each a Factorization Machine
Block (FMB, new pairwise interactions) beside a Linear Compression Block (LCB,
recombined embeddings), with a residual and LayerNorm. Layer i sees interactions of
order up to 2^i (binary exponentiation: layer i+1 takes products of layer i's outputs).

Notation: B batch, F fields, D embedding size; a layer maps n input embeddings to
n_F + n_L output embeddings (the first layer has n = F); k the rank of the optimised FM.

The cost functions below (``fmb_flops``, ``wukong_layer_flops``, ``wukong_flops``)
are the single place the FLOPs formulas live: the modules' ``flops()`` call them,
and the model family uses them to size WuKong to a FLOPs budget without building it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mldcn.layers.activation import init_linear, xavier_normal_
from mldcn.layers.flops import (
    ELEMENTWISE,
    LAYER_NORM,
    Flops,
    activation_flops,
    linear_flops,
)
from mldcn.layers.mlp import MLP


def fmb_flops(num_inputs: int, dim: int, rank: int, num_outputs: int, hidden: Sequence[int]) -> Flops:
    """FLOPs per example of :class:`FactorizationMachineBlock` (see there for the terms)."""
    n, k = num_inputs, rank
    flops = Flops(matmul=2 * n * dim * k + 2 * n * dim * k)  # X^T Y, then X (X^T Y)
    flops = flops + Flops(elementwise=LAYER_NORM * n * k)
    width = n * k
    for out in hidden:  # MLP: Linear + bias + ReLU per hidden layer
        flops = flops + linear_flops(width, out) + activation_flops("relu", out)
        width = out
    return flops + linear_flops(width, num_outputs * dim)  # output layer, no activation


def wukong_layer_flops(
    num_inputs: int, dim: int, num_fm_outputs: int, num_lcb_outputs: int, rank: int, hidden: Sequence[int]
) -> Flops:
    """FLOPs per example of :class:`WuKongLayer`."""
    n, n_out = num_inputs, num_fm_outputs + num_lcb_outputs
    flops = fmb_flops(n, dim, rank, num_fm_outputs, hidden)
    flops = flops + Flops(matmul=2 * n * num_lcb_outputs * dim)  # LCB: W_L X
    if n_out != n:
        flops = flops + Flops(matmul=2 * n * n_out * dim)  # residual projection W_R X
    return flops + Flops(elementwise=(ELEMENTWISE + LAYER_NORM) * n_out * dim)  # + residual, LN


def wukong_flops(
    num_fields: int,
    dim: int,
    num_layers: int,
    num_fm_outputs: int,
    num_lcb_outputs: int,
    rank: int,
    hidden: Sequence[int],
) -> Flops:
    """FLOPs per example of :class:`WuKong`: its layers, the first on F embeddings, the rest on n_F + n_L."""
    flops = Flops()
    n = num_fields
    for _ in range(num_layers):
        flops = flops + wukong_layer_flops(n, dim, num_fm_outputs, num_lcb_outputs, rank, hidden)
        n = num_fm_outputs + num_lcb_outputs
    return flops


class FactorizationMachineBlock(nn.Module):
    """WuKong's FMB: an MLP over the normalised, optimised FM of the embeddings.

        P      = X^T Y                                   # [B, D, k]   Y ∈ R^{n×k} learned
        FM(X)  = X P = X (X^T Y)                          # [B, n, k]   optimised FM
        FMB(X) = reshape(MLP(LN(flatten(FM(X)))))          # [B, n·k] → [B, n_F·D] → [B, n_F, D]

    The plain FM ``X X^T`` ([B, n, n], all pairwise dot products) costs O(n²D);
    projecting it onto k directions, ``(X X^T) Y``, computed right to left costs
    O(nkD) and, as the paper notes, loses little because the dot-product matrix
    is low rank. The MLP has ReLU hidden layers and a linear output layer.

    Guidance: k of the order of n_F (public re-implementations use k between n_F/2
    and 1.5·n_F); the MLP is where most of a wide FMB's FLOPs go.

    Args:
        num_inputs: n, embeddings in.
        dim: D, embedding size.
        num_outputs: n_F, embeddings out.
        rank: k, columns of Y.
        hidden: widths of the MLP's hidden layers (ReLU).
        dropout: dropout after each hidden layer.

    Shape:
        ``[B, n, D]`` → ``[B, n_F, D]``

    Example:
        >>> fmb = FactorizationMachineBlock(num_inputs=5, dim=4, num_outputs=3, rank=2, hidden=(16,))
        >>> fmb(torch.randn(2, 5, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(
        self,
        num_inputs: int,
        dim: int,
        num_outputs: int,
        rank: int,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(num_inputs, dim, num_outputs, rank) < 1:
            raise ValueError(
                "num_inputs, dim, num_outputs, rank must be >= 1, "
                f"got {num_inputs}, {dim}, {num_outputs}, {rank}"
            )
        self.num_inputs, self.dim, self.num_outputs, self.rank = num_inputs, dim, num_outputs, rank
        self.hidden = tuple(hidden)
        self.projection = nn.Parameter(torch.empty(num_inputs, rank))  # Y
        xavier_normal_(self.projection, num_inputs, rank)
        self.norm = nn.LayerNorm(num_inputs * rank)
        self.mlp = MLP(num_inputs * rank, self.hidden, dropout=dropout)
        self.output = nn.Linear(self.mlp.out_dim, num_outputs * dim)
        init_linear(self.output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.matmul(x.transpose(1, 2), self.projection)  # [B, D, n] @ [n, k] -> [B, D, k]
        fm = torch.bmm(x, p)  # [B, n, D] @ [B, D, k] -> [B, n, k]
        h = self.output(self.mlp(self.norm(fm.flatten(1))))  # [B, n·k] -> [B, n_F·D]
        return h.view(-1, self.num_outputs, self.dim)  # [B, n_F, D]

    def flops(self) -> Flops:
        return fmb_flops(self.num_inputs, self.dim, self.rank, self.num_outputs, self.hidden)


class LinearCompressBlock(nn.Module):
    """WuKong's LCB: ``LCB(X) = W_L X``, n embeddings recombined into n_L (no new interactions).

    W_L ∈ R^{n_L×n} mixes whole embeddings (the field axis), not their D
    coordinates. It keeps the lower-order interactions of a layer's input
    available to the next layer.

    Args:
        num_inputs: n.
        num_outputs: n_L.

    Shape:
        ``[B, n, D]`` → ``[B, n_L, D]``

    Example:
        >>> lcb = LinearCompressBlock(num_inputs=2, num_outputs=1)
        >>> with torch.no_grad():
        ...     _ = lcb.weight.copy_(torch.tensor([[1.0, -1.0]]))
        >>> lcb(torch.tensor([[[3.0, 4.0], [1.0, 1.0]]]))
        tensor([[[2., 3.]]], grad_fn=<TransposeBackward0>)
    """

    def __init__(self, num_inputs: int, num_outputs: int) -> None:
        super().__init__()
        if num_inputs < 1 or num_outputs < 1:
            raise ValueError(f"num_inputs and num_outputs must be >= 1, got {num_inputs}, {num_outputs}")
        self.num_inputs, self.num_outputs = num_inputs, num_outputs
        self.linear = nn.Linear(num_inputs, num_outputs, bias=False)  # W_L
        init_linear(self.linear)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight  # [n_L, n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.transpose(1, 2)).transpose(1, 2)  # [B, D, n] -> [B, D, n_L] -> [B, n_L, D]


class WuKongLayer(nn.Module):
    """One WuKong interaction layer.

        X_{i+1} = LN(concat(FMB(X_i), LCB(X_i)) + W_R X_i)        # [B, n_F + n_L, D]

    LN normalises each output embedding over D. W_R (a learned ``[n_F + n_L, n]``
    map over the field axis, like the LCB) exists only where n_F + n_L != n;
    otherwise the residual is X_i itself, as in the paper's equation. The paper
    states the residual, not how to match sizes; a linear projection is the
    choice of its public re-implementations too.

    Args:
        num_inputs: n.
        dim: D.
        num_fm_outputs: n_F.
        num_lcb_outputs: n_L.
        rank: k of the FMB's optimised FM.
        hidden: the FMB's MLP hidden widths.
        dropout: dropout in the FMB's MLP.

    Shape:
        ``[B, n, D]`` → ``[B, n_F + n_L, D]``

    Example:
        >>> layer = WuKongLayer(num_inputs=5, dim=4, num_fm_outputs=2, num_lcb_outputs=3, rank=2, hidden=(8,))
        >>> layer.residual is None  # n_F + n_L == n: the residual is X itself
        True
        >>> layer(torch.randn(2, 5, 4)).shape
        torch.Size([2, 5, 4])
    """

    def __init__(
        self,
        num_inputs: int,
        dim: int,
        num_fm_outputs: int,
        num_lcb_outputs: int,
        rank: int,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_inputs, self.dim = num_inputs, dim
        self.num_fm_outputs, self.num_lcb_outputs, self.rank = num_fm_outputs, num_lcb_outputs, rank
        self.hidden = tuple(hidden)
        self.num_outputs = num_fm_outputs + num_lcb_outputs
        self.fmb = FactorizationMachineBlock(num_inputs, dim, num_fm_outputs, rank, hidden, dropout)
        self.lcb = LinearCompressBlock(num_inputs, num_lcb_outputs)
        self.residual = (
            LinearCompressBlock(num_inputs, self.num_outputs) if self.num_outputs != num_inputs else None
        )  # W_R
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.fmb(x), self.lcb(x)], dim=1)  # [B, n_F + n_L, D]
        residual = x if self.residual is None else self.residual(x)  # [B, n_F + n_L, D]
        return self.norm(out + residual)

    def flops(self) -> Flops:
        return wukong_layer_flops(
            self.num_inputs, self.dim, self.num_fm_outputs, self.num_lcb_outputs, self.rank, self.hidden
        )


class WuKong(nn.Module):
    """WuKong's interaction stack: ``num_layers`` :class:`WuKongLayer` on the field embeddings.

        X_0     = E                                                 # [B, F, D]
        X_{i+1} = LN(concat(FMB_i(X_i), LCB_i(X_i)) + X_i)          # [B, n_F + n_L, D]
        h       = flatten(X_L)                                      # [B, (n_F + n_L)·D]

    with the FMB's optimised FM ``X (X^T Y)`` and the LCB ``W_L X`` (see the
    blocks). The first layer's residual is projected when n_F + n_L != F.

    Guidance (paper): scale up by stacking layers (interaction order up to 2^L) and
    widening n_F, n_L, k and the FMB MLP together. Cost per layer with one MLP
    hidden layer of width h: 4nDk + 2·(nk·h + h·n_F·D) + 2·n·n_L·D matmul FLOPs,
    plus 2·n·(n_F + n_L)·D for the first layer's residual projection if F != n_F + n_L.

    Args:
        num_fields: F.
        dim: D.
        num_layers: L.
        num_fm_outputs: n_F, FMB embeddings per layer.
        num_lcb_outputs: n_L, LCB embeddings per layer.
        rank: k of the optimised FM.
        hidden: the FMB's MLP hidden widths (ReLU).
        dropout: dropout in the FMB's MLP.

    Shape:
        ``[B, F, D]`` → ``[B, (n_F + n_L)·D]``

    Example:
        >>> net = WuKong(num_fields=6, dim=4, num_layers=2, num_fm_outputs=2, num_lcb_outputs=2, rank=3,
        ...              hidden=(16,))
        >>> net(torch.randn(3, 6, 4)).shape
        torch.Size([3, 16])
        >>> net.out_dim
        16
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        num_layers: int,
        num_fm_outputs: int,
        num_lcb_outputs: int,
        rank: int,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(num_fields, dim, num_layers) < 1:
            raise ValueError(
                f"num_fields, dim, num_layers must be >= 1, got {num_fields}, {dim}, {num_layers}"
            )
        self.num_fields, self.dim, self.num_layers = num_fields, dim, num_layers
        self.num_fm_outputs, self.num_lcb_outputs, self.rank = num_fm_outputs, num_lcb_outputs, rank
        self.hidden = tuple(hidden)
        width = num_fm_outputs + num_lcb_outputs
        inputs = [num_fields] + [width] * (num_layers - 1)  # n of each layer
        self.layers = nn.ModuleList(
            WuKongLayer(n, dim, num_fm_outputs, num_lcb_outputs, rank, hidden, dropout) for n in inputs
        )
        self.out_dim = width * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)  # [B, n, D] -> [B, n_F + n_L, D]
        return x.flatten(1)  # [B, (n_F + n_L)·D]

    def flops(self) -> Flops:
        return wukong_flops(
            self.num_fields,
            self.dim,
            self.num_layers,
            self.num_fm_outputs,
            self.num_lcb_outputs,
            self.rank,
            self.hidden,
        )
