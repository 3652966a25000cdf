"""DLRM's dot interaction (Naumov et al., "Deep Learning Recommendation Model for
Personalization and Recommendation Systems", arXiv 1906.00091).

DLRM crosses features only by the inner products of pairs of their vectors (as a
factorization machine does), and leaves everything of higher order to its top
("over") MLP. TorchRec splits the model into ``SparseArch``, ``DenseArch``,
``InteractionArch`` (the dot products) and ``OverArch`` (the top MLP).

Notation: B batch, F fields, D embedding size, P = F(F−1)/2 pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from mldcn.layers.flops import BATCH_NORM, Flops, activation_flops, linear_flops
from mldcn.layers.mlp import MLP


def dot_interaction_flops(num_fields: int, dim: int) -> Flops:
    """``X X^T`` in full (``[F, D] @ [D, F]``), as DLRM and TorchRec compute it; the
    gather of the upper triangle is free."""
    return Flops(matmul=2 * num_fields * num_fields * dim)


def dlrm_interaction_flops(
    num_fields: int,
    dim: int,
    top_mlp_dim: int,
    top_mlp_layers: int = 1,
    concat_embeddings: bool = True,
    batch_norm: bool = False,
) -> Flops:
    """FLOPs per example of :class:`DLRMInteraction`: the dot products and the MLP layers."""
    flops = dot_interaction_flops(num_fields, dim)
    width = num_fields * (num_fields - 1) // 2 + (num_fields * dim if concat_embeddings else 0)
    for _ in range(top_mlp_layers):  # as MLP.flops(): Linear + bias, (BN), ReLU
        flops = flops + linear_flops(width, top_mlp_dim) + activation_flops("relu", top_mlp_dim)
        flops = flops + Flops(elementwise=BATCH_NORM * top_mlp_dim if batch_norm else 0)
        width = top_mlp_dim
    return flops


class DotInteraction(nn.Module):
    """The inner products of every pair of field vectors, each pair once.

        Z       = X X^T                                   # [B, F, F], Z_ij = <x_i, x_j>
        p       = (Z_ij for i < j, row by row)            # [B, P]
                = (Z_01, Z_02, ..., Z_0,F-1, Z_12, ..., Z_F-2,F-1)

    The diagonal ``<x_i, x_i>`` is left out, as in DLRM (``arch_interaction_itself``
    off) and TorchRec's ``InteractionArch``. The order is the row-major upper
    triangle (``torch.triu_indices(F, F, offset=1)``): TorchRec's order, where its
    dense vector is field 0. DLRM's reference code (``dlrm_s_pytorch``) reads the
    lower triangle row by row, (1,0), (2,0), (2,1), (3,0), ...: the same values in
    another order, which the next Linear layer absorbs.

    Args:
        num_fields: F (>= 2: one field has no pair).
        dim: D.

    Shape:
        ``[B, F, D]`` → ``[B, F(F−1)/2]``

    Example:
        >>> x = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]])
        >>> DotInteraction(num_fields=3, dim=2)(x)  # <x0,x1>, <x0,x2>, <x1,x2>
        tensor([[2., 0., 3.]])
    """

    def __init__(self, num_fields: int, dim: int) -> None:
        super().__init__()
        if num_fields < 2:
            raise ValueError(f"num_fields must be >= 2 for pairwise dot products, got {num_fields}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.num_fields, self.dim = num_fields, dim
        self.in_dim = num_fields * dim
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        # positions of the pairs in the flattened F×F matrix; not in the state dict
        self.register_buffer("pair_index", rows * num_fields + cols, persistent=False)
        self.out_dim = num_fields * (num_fields - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.bmm(x, x.transpose(1, 2))  # [B, F, D] @ [B, D, F] -> [B, F, F]
        return z.flatten(1)[:, self.pair_index]  # [B, F·F] -> [B, P]

    def flops(self) -> Flops:
        return dot_interaction_flops(self.num_fields, self.dim)


class DLRMInteraction(nn.Module):
    """DLRM's interaction and the first layers of its top MLP, as one module.

        p = DotInteraction(X)                                       # [B, P]
        z = [flatten(X) ; p]   (or p alone, concat_embeddings=False) # [B, F·D + P]
        h = MLP_w(z)           top_mlp_layers layers of width w      # [B, w]

    DLRM feeds its top MLP the dot products concatenated with the dense features'
    bottom-MLP output (the one vector that is not crossed). In mldcn every feature,
    numeric ones included, is a field of X (``FeatureEmbedding`` embeds a numeric
    value as ``value · w_f``, a one-layer bottom MLP per field), so there is no
    separate dense vector; its counterpart is the flattened embedding X, which keeps
    first-order signal next to the crosses. With ``concat_embeddings=False`` the
    module is FuxiCTR's DLRM (``interaction_op: dot``) on categorical-only data:
    the dot products alone. With the dot products' weights at zero the first layer
    reads X alone, FuxiCTR's ``interaction_op: cat``.

    The dot products have no width of their own. To give the family one that a FLOPs
    budget can resize, the first ``top_mlp_layers`` layers of DLRM's top MLP sit
    inside this module (width w); the shared stacked head (``MLP(h) → logit``)
    finishes the top MLP. DLRM's top MLP ``[w, h_1, ..., h_k, 1]`` is thus this
    module with the stacked head ``hidden=(h_1, ..., h_k)``.

    Args:
        num_fields: F (>= 2).
        dim: D.
        top_mlp_dim: w, width of the top-MLP layers inside the module.
        top_mlp_layers: how many of them (>= 1).
        concat_embeddings: put flatten(X) beside the dot products.
        dropout: dropout after each of those layers.
        batch_norm: batch norm after each Linear (FuxiCTR's ``MLP_Block`` order).

    Shape:
        ``[B, F, D]`` → ``[B, w]``

    Example:
        >>> net = DLRMInteraction(num_fields=4, dim=3, top_mlp_dim=8)
        >>> net(torch.randn(2, 4, 3)).shape
        torch.Size([2, 8])
        >>> net.dot.out_dim, net.top.in_dim  # P = 6 pairs, beside F·D = 12
        (6, 18)
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        top_mlp_dim: int = 512,
        top_mlp_layers: int = 1,
        concat_embeddings: bool = True,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if top_mlp_dim < 1 or top_mlp_layers < 1:
            raise ValueError(f"top_mlp_dim and top_mlp_layers must be >= 1, got {top_mlp_dim}, {top_mlp_layers}")
        self.num_fields, self.dim = num_fields, dim
        self.top_mlp_dim, self.top_mlp_layers = top_mlp_dim, top_mlp_layers
        self.concat_embeddings, self.batch_norm = concat_embeddings, batch_norm
        self.dot = DotInteraction(num_fields, dim)
        width = self.dot.out_dim + (num_fields * dim if concat_embeddings else 0)
        self.top = MLP(width, (top_mlp_dim,) * top_mlp_layers, dropout=dropout, batch_norm=batch_norm)
        self.in_dim = num_fields * dim
        self.out_dim = top_mlp_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dot(x)  # [B, P]
        z = torch.cat([x.flatten(1), p], dim=1) if self.concat_embeddings else p  # [B, F·D + P]
        return self.top(z)  # [B, w]

    def flops(self) -> Flops:
        return dlrm_interaction_flops(
            self.num_fields, self.dim, self.top_mlp_dim, self.top_mlp_layers, self.concat_embeddings, self.batch_norm
        )
