"""Compressed Interaction Network (Lian et al., "xDeepFM: Combining Explicit and Implicit
Feature Interactions for Recommender Systems", KDD 2018, arXiv 1803.05170).

Notation: B batch, F fields, D embedding size; X^0 = E ∈ R^{F×D} the field embeddings
of one example; layer k has H_k feature maps X^k ∈ R^{H_k×D}.

    X^k_{h,*} = Σ_{i=1..H_{k-1}} Σ_{j=1..F} W^{k,h}_{ij} (X^{k-1}_{i,*} ∘ X^0_{j,*})     # [H_k, D]
    p^k_h     = Σ_d X^k_{h,d}                                                       # [H_k]  sum pooling
    p+        = [p^1 ; ... ; p^L]                                                   # [Σ_k H_k]

Each layer takes the Hadamard products of every map of the previous layer with
every field embedding (an outer product along the field axes, kept per embedding
coordinate d) and compresses the H_{k-1}·F products to H_k maps with one weight
matrix W^k ∈ R^{H_k × H_{k-1}F} shared across d (a 1×1 convolution over d). Layer k
holds interactions of order exactly k+1, vector-wise (the weights never mix
coordinates d).

The cost functions (``cin_layer_flops``, ``cin_flops``) are the single place the FLOPs
formulas live: the module's ``flops()`` calls them and the xDeepFM family sizes the
network to a FLOPs budget with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mldcn.layers.activation import init_linear
from mldcn.layers.flops import ELEMENTWISE, Flops
from mldcn.layers.fm import FirstOrderTerm


def _next_and_pooled(sizes: Sequence[int], split_half: bool) -> tuple[list[int], list[int]]:
    """Per layer: maps passed on to the next layer, and maps sum-pooled into the output."""
    last = len(sizes) - 1
    passed = [h // 2 if split_half and k < last else h for k, h in enumerate(sizes)]
    pooled = [h - h // 2 if split_half and k < last else h for k, h in enumerate(sizes)]
    return passed, pooled


def cin_output_dim(layer_sizes: Sequence[int], split_half: bool = False) -> int:
    """Width of p+: Σ_k H_k, or Σ_{k<L} H_k/2 + H_L with split-half."""
    return sum(_next_and_pooled(layer_sizes, split_half)[1])


def cin_layer_flops(num_fields: int, dim: int, in_maps: int, out_maps: int, pooled: int) -> Flops:
    """FLOPs per example of one CIN layer with H_{k-1} = ``in_maps`` inputs and H_k = ``out_maps``.

    Hadamard products H_{k-1}·F·D; compression 2·H_k·H_{k-1}F·D (matmul); bias H_k·D;
    sum pooling D per pooled map.
    """
    products = in_maps * num_fields
    matmul = 2 * out_maps * products * dim
    elementwise = ELEMENTWISE * (products * dim + out_maps * dim + pooled * dim)
    return Flops(matmul=matmul, elementwise=elementwise)


def cin_flops(num_fields: int, dim: int, layer_sizes: Sequence[int], split_half: bool = False) -> Flops:
    """FLOPs per example of :class:`CompressedInteractionNet`."""
    passed, pooled = _next_and_pooled(layer_sizes, split_half)
    flops = Flops()
    in_maps = num_fields
    for out_maps, pool, nxt in zip(layer_sizes, pooled, passed):
        flops = flops + cin_layer_flops(num_fields, dim, in_maps, out_maps, pool)
        in_maps = nxt
    return flops


class CompressedInteractionNet(nn.Module):
    """xDeepFM's CIN: explicit, vector-wise interactions of bounded order, sum-pooled.

        Z^k   = X^{k-1} ⊗ X^0                     # [B, D, H_{k-1}·F]   z_{(i,j),d} = X^{k-1}_{i,d} X^0_{j,d}
        X^k   = W^k Z^k + b^k                     # [B, D, H_k]         W^k_{h,(i,j)} = W^{k,h}_{ij}
        p^k   = Σ_d X^k                           # [B, H_k]
        h     = [p^1 ; ... ; p^L]                 # [B, Σ_k H_k]

    (computed in a ``[B, D, maps]`` layout, so W^k is one ``nn.Linear``: the weight of
    map h on the product of map i and field j is ``compress[k].weight[h, i·F + j]``).

    ``split_half`` (from the authors' released code, not the paper's equations; FuxiCTR
    and BARS do not use it): every layer but the last passes its first H_k/2 maps to
    the next layer and sum-pools only the other H_k/2; this needs even H_k (k < L).

    Differences from the paper's equation, all as in FuxiCTR (BARS): each layer has a
    bias b^k (a 1×1 convolution with bias) and no activation. xDeepFM's own output
    unit ``w^T p+`` is the head's job here (see :class:`XDeepFMInteraction`).

    Guidance (paper): Criteo 200 maps per layer, Dianping and Bing News 100, depth 3;
    BARS Frappe (10 fields) uses a single layer of 64. Cost per layer
    ≈ 2·H_k·H_{k-1}·F·D: the first layer is F/H times cheaper than the others.

    Args:
        num_fields: F.
        dim: D.
        layer_sizes: H_1, ..., H_L.
        split_half: pass half the maps of each layer but the last on, pool the other half.

    Shape:
        ``[B, F, D]`` → ``[B, Σ_k H_k]`` (``[B, Σ_{k<L} H_k/2 + H_L]`` with split-half)

    Example:
        >>> cin = CompressedInteractionNet(num_fields=5, dim=4, layer_sizes=(8, 6))
        >>> cin(torch.randn(3, 5, 4)).shape
        torch.Size([3, 14])
        >>> CompressedInteractionNet(5, 4, layer_sizes=(8, 6), split_half=True).out_dim  # 8/2 + 6
        10
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        layer_sizes: Sequence[int] = (64, 64, 64),
        split_half: bool = False,
    ) -> None:
        super().__init__()
        layer_sizes = tuple(layer_sizes)
        if num_fields < 1 or dim < 1:
            raise ValueError(f"num_fields and dim must be >= 1, got {num_fields}, {dim}")
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be one or more sizes >= 1, got {layer_sizes}")
        if split_half and any(h % 2 for h in layer_sizes[:-1]):
            raise ValueError(
                f"layer_sizes must be even except the last with split_half, got {layer_sizes}"
            )
        self.num_fields, self.dim = num_fields, dim
        self.layer_sizes, self.split_half = layer_sizes, split_half
        self._passed, self._pooled = _next_and_pooled(layer_sizes, split_half)
        inputs = [num_fields, *self._passed[:-1]]  # H_{k-1} of each layer
        self.compress = nn.ModuleList(nn.Linear(h_in * num_fields, h) for h_in, h in zip(inputs, layer_sizes))
        for linear in self.compress:
            init_linear(linear)
        self.out_dim = cin_output_dim(layer_sizes, split_half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.transpose(1, 2)  # [B, D, F]
        xk = x0  # [B, D, H_{k-1}]
        pooled = []
        for k, linear in enumerate(self.compress):
            z = (xk.unsqueeze(3) * x0.unsqueeze(2)).flatten(2)  # [B, D, H_{k-1}, F] -> [B, D, H_{k-1}·F]
            xk = linear(z)  # [B, D, H_k]
            if self.split_half and k < len(self.compress) - 1:
                half = self._passed[k]
                pooled.append(xk[..., half:].sum(dim=1))  # [B, H_k/2]
                xk = xk[..., :half]  # [B, D, H_k/2] on to the next layer
            else:
                pooled.append(xk.sum(dim=1))  # [B, H_k]
        return torch.cat(pooled, dim=1)  # [B, out_dim]

    def flops(self) -> Flops:
        return cin_flops(self.num_fields, self.dim, self.layer_sizes, self.split_half)


class XDeepFMInteraction(nn.Module):
    """xDeepFM's explicit part: the CIN's pooled maps and the linear (first-order) term.

        h = [p+ ; w^T flatten(E)]                # [B, Σ_k H_k + 1]

    xDeepFM (arXiv 1803.05170) predicts
    ``sigmoid(w_linear^T a + w_dnn^T x_dnn + w_cin^T p+ + b)``: one linear unit over
    the linear term, the DNN's last layer and the CIN's p+. mldcn's parallel head,
    ``logit = W [h ; MLP(x0)] + b``, is exactly that unit when the head's MLP is the
    DNN, so the paper's model is this module under ``HeadConfig(structure="parallel")``.
    (FuxiCTR sums three logits, ``fc(p+)``, the DNN's output layer and LR: the same
    function.) The linear term reads the embeddings instead of raw one-hot features
    (see :mod:`mldcn.layers.fm`).

    Args:
        num_fields: F.
        dim: D.
        layer_sizes: CIN maps per layer, H_1, ..., H_L.
        split_half: see :class:`CompressedInteractionNet`.

    Shape:
        ``[B, F, D]`` → ``[B, out_dim]``, ``out_dim`` = the CIN's width + 1

    Example:
        >>> net = XDeepFMInteraction(num_fields=4, dim=3, layer_sizes=(5,))
        >>> net(torch.randn(2, 4, 3)).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        layer_sizes: Sequence[int] = (64, 64, 64),
        split_half: bool = False,
    ) -> None:
        super().__init__()
        self.cin = CompressedInteractionNet(num_fields, dim, layer_sizes, split_half)
        self.first_order = FirstOrderTerm(num_fields, dim)
        self.out_dim = self.cin.out_dim + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cin(x), self.first_order(x)], dim=1)  # [B, Σ_k H_k + 1]

    def flops(self) -> Flops:
        return self.cin.flops() + self.first_order.flops()
