"""GDCN's gated cross network (Wang et al., "Towards Deeper, Lighter and Interpretable
Cross Network for CTR Prediction", CIKM 2023, arXiv 2311.04635).

The Gated Cross Network (GCN) is DCNv2's full-rank cross network
(:class:`~mldcn.layers.cross.CrossNet`) with an *information gate* on every cross
layer: each of the d crossed features of order l+1 is scaled by a sigmoid of the
layer's input, so a deep stack can keep the useful high-order crosses and shut the
noisy ones (the paper's argument for going deeper than DCNv2's 2–4 layers).
"""

from __future__ import annotations

import torch
from torch import nn

from mldcn.layers.activation import init_linear
from mldcn.layers.flops import ELEMENTWISE, TRANSCENDENTAL, Flops


class GatedCrossNet(nn.Module):
    """GDCN's gated cross network: ``num_layers`` gated cross layers on ``x0 [B, d]``.

        c_{l+1} = c0 ⊙ (W_l c_l + b_l) ⊙ σ(W_g,l c_l) + c_l       W_l, W_g,l ∈ R^{d×d}

    ``W_l c_l + b_l`` is DCNv2's feature crossing, ``σ(W_g,l c_l)`` the information
    gate (one value in (0, 1) per crossed feature), ``c_l`` the residual. As in the
    paper and its code (and FuxiCTR's ``GateCorssLayer``), both maps are full rank,
    the gate has no bias, and b_l starts uniform in [0, 1) (W_l, W_g,l Xavier-normal).

    Relation to DCNv2: with ``W_g = 0`` every gate is σ(0) = 1/2, and a gated layer
    with (2W, 2b) is exactly DCNv2's cross layer ``c0 ⊙ (W c_l + b) + c_l`` with
    (W, b) (a test checks it against :class:`~mldcn.layers.cross.CrossNet`). The gate
    can never be 1 exactly, so that factor 2 is the whole difference at W_g = 0.

    Cost 4d² FLOPs per layer (two d×d maps), twice DCNv2's full-rank layer: practical
    for small d (Frappe: d = 100). The paper's other part, field-level dimension
    optimisation (a learned embedding size per field), is not here: every field has
    the same D in mldcn (FuxiCTR's GDCN does the same).

    Args:
        in_dim: d, width of x0.
        num_layers: L, number of gated cross layers (the paper reports GDCN still
            improving at depths where DCNv2's cross network has stopped).

    Shape:
        ``[B, d]`` or ``[B, F, D]`` → ``[B, d]``

    Example:
        >>> net = GatedCrossNet(in_dim=6, num_layers=2)
        >>> net(torch.ones(3, 2, 3)).shape
        torch.Size([3, 6])
        >>> net.flops().matmul  # 2 layers × (W, W_g) × 2·6·6
        288
    """

    def __init__(self, in_dim: int, num_layers: int) -> None:
        super().__init__()
        if in_dim < 1 or num_layers < 1:
            raise ValueError(f"in_dim and num_layers must be >= 1, got {in_dim}, {num_layers}")
        self.in_dim = self.out_dim = in_dim
        self.num_layers = num_layers
        self.weights = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers))  # W_l, b_l
        self.gates = nn.ModuleList(nn.Linear(in_dim, in_dim, bias=False) for _ in range(num_layers))  # W_g,l
        for linear in (*self.weights, *self.gates):
            init_linear(linear)
        for linear in self.weights:
            nn.init.uniform_(linear.bias)  # b_l ~ U[0, 1), as the paper's code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0 = x.flatten(1)  # [B, d]
        c = c0
        for weight, gate in zip(self.weights, self.gates):
            c = c0 * weight(c) * torch.sigmoid(gate(c)) + c  # [B, d]
        return c

    def flops(self) -> Flops:
        d = self.in_dim
        # W and W_g; + b, ⊙ c0, ⊙ gate, residual; sigmoid
        layer = Flops(matmul=2 * (2 * d * d), elementwise=4 * d * ELEMENTWISE + d * TRANSCENDENTAL)
        return layer * self.num_layers
