"""DCNv2 cross networks (Wang et al., "DCN V2", WWW 2021, arXiv 2008.13535).

Three variants, one class each (as TorchRec's ``CrossNet``, ``LowRankCrossNet``,
``LowRankMixtureCrossNet``). Each is a stack of ``num_layers`` cross layers on the
flattened embedding ``x0 [B, d]``; input ``[B, F, D]`` is flattened first.
"""

from __future__ import annotations

import torch
from torch import nn

from mldcn.layers.activation import init_linear, make_activation, xavier_normal_
from mldcn.layers.flops import ELEMENTWISE, TRANSCENDENTAL, Flops, activation_flops


def _check(in_dim: int, num_layers: int) -> None:
    if in_dim < 1 or num_layers < 1:
        raise ValueError(f"in_dim and num_layers must be >= 1, got {in_dim}, {num_layers}")


class CrossNet(nn.Module):
    """Full-rank DCNv2 cross network.

        x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l          W_l ∈ R^{d×d}

    Cost 2d² FLOPs per layer: practical only for small d. The DCNv2 paper found
    a low-rank ``W = U V^T`` with r ≈ d/4 keeps full-rank accuracy.

    Args:
        in_dim: d, width of x0.
        num_layers: L, number of cross layers.

    Shape:
        ``[B, d]`` or ``[B, F, D]`` → ``[B, d]``

    Example:
        >>> CrossNet(in_dim=6, num_layers=2)(torch.ones(3, 2, 3)).shape
        torch.Size([3, 6])
    """

    def __init__(self, in_dim: int, num_layers: int) -> None:
        super().__init__()
        _check(in_dim, num_layers)
        self.in_dim = self.out_dim = in_dim
        self.num_layers = num_layers
        self.weights = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers))
        for linear in self.weights:
            init_linear(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.flatten(1)  # [B, d]
        xl = x0
        for linear in self.weights:
            xl = x0 * linear(xl) + xl  # [B, d]
        return xl

    def flops(self) -> Flops:
        d = self.in_dim
        # matmul + (bias, ⊙ x0, residual)
        return Flops(matmul=2 * d * d, elementwise=3 * d * ELEMENTWISE) * self.num_layers


class LowRankCrossNet(nn.Module):
    """Low-rank DCNv2 cross network.

        z_l     = V_l^T x_l                            # [B, r]
        x_{l+1} = x0 ⊙ (U_l z_l + b_l) + x_l           # [B, d]   U_l, V_l ∈ R^{d×r}

    Cost 4dr FLOPs per layer. DCNv2's guidance: r ≈ d/4 preserves full-rank
    accuracy; ML-DCN (:class:`~mldcn.layers.mldcn.MaskedLowRankCrossNet`) is this
    layer with an instance-conditioned mask on z_l.

    Args:
        in_dim: d, width of x0.
        num_layers: L.
        rank: r.

    Shape:
        ``[B, d]`` or ``[B, F, D]`` → ``[B, d]``

    Example:
        >>> LowRankCrossNet(in_dim=8, num_layers=3, rank=2)(torch.ones(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(self, in_dim: int, num_layers: int, rank: int) -> None:
        super().__init__()
        _check(in_dim, num_layers)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_dim = self.out_dim = in_dim
        self.num_layers = num_layers
        self.rank = rank
        self.down = nn.ModuleList(nn.Linear(in_dim, rank, bias=False) for _ in range(num_layers))  # V^T
        self.up = nn.ModuleList(nn.Linear(rank, in_dim) for _ in range(num_layers))  # U, b
        for linear in (*self.down, *self.up):
            init_linear(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.flatten(1)  # [B, d]
        xl = x0
        for down, up in zip(self.down, self.up):
            xl = x0 * up(down(xl)) + xl  # [B, r] -> [B, d]
        return xl

    def flops(self) -> Flops:
        d, r = self.in_dim, self.rank
        return Flops(matmul=4 * d * r, elementwise=3 * d * ELEMENTWISE) * self.num_layers


class MixtureCrossNet(nn.Module):
    """DCNv2 mixture of low-rank experts.

        E_i(x_l) = x0 ⊙ (U_{l,i} g(C_{l,i} g(V_{l,i}^T x_l)) + b_l)      # expert i, [B, d]
        G(x_l)   = softmax(W_g x_l)                                     # [B, K]
        x_{l+1}  = Σ_i G_i(x_l) E_i(x_l) + x_l

    Without ``nonlinear`` the ``g(C g(·))`` part is skipped (E_i is a plain
    low-rank cross). The bias b_l is shared by the experts of a layer.

    Args:
        in_dim: d.
        num_layers: L.
        rank: r of each expert.
        num_experts: K.
        nonlinear: insert the r×r map C with activation g.
        activation: g.

    Shape:
        ``[B, d]`` or ``[B, F, D]`` → ``[B, d]``

    Example:
        >>> MixtureCrossNet(8, num_layers=2, rank=2, num_experts=3)(torch.ones(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        in_dim: int,
        num_layers: int,
        rank: int,
        num_experts: int = 4,
        nonlinear: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        _check(in_dim, num_layers)
        if rank < 1 or num_experts < 1:
            raise ValueError(f"rank and num_experts must be >= 1, got {rank}, {num_experts}")
        d, r, k = in_dim, rank, num_experts
        self.in_dim = self.out_dim = d
        self.num_layers, self.rank, self.num_experts = num_layers, r, k
        self.nonlinear = nonlinear
        self.activation_name = activation
        self.activation = make_activation(activation)
        self.down = nn.ParameterList(nn.Parameter(torch.empty(k, d, r)) for _ in range(num_layers))
        self.up = nn.ParameterList(nn.Parameter(torch.empty(k, r, d)) for _ in range(num_layers))
        self.inner = (
            nn.ParameterList(nn.Parameter(torch.empty(k, r, r)) for _ in range(num_layers))
            if nonlinear
            else None
        )
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _ in range(num_layers))
        self.gates = nn.ModuleList(nn.Linear(d, k, bias=False) for _ in range(num_layers))
        for layer in range(num_layers):
            xavier_normal_(self.down[layer], d, r)
            xavier_normal_(self.up[layer], r, d)
            if self.inner is not None:
                xavier_normal_(self.inner[layer], r, r)
            init_linear(self.gates[layer])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.flatten(1)  # [B, d]
        xl = x0
        for layer in range(self.num_layers):
            z = torch.einsum("bd,kdr->bkr", xl, self.down[layer])  # [B, K, r]
            if self.inner is not None:
                z = self.activation(z)
                z = self.activation(torch.einsum("bkr,kqr->bkq", z, self.inner[layer]))  # [B, K, r]
            experts = x0.unsqueeze(1) * (
                torch.einsum("bkr,krd->bkd", z, self.up[layer]) + self.bias[layer]
            )  # [B, K, d]
            gate = torch.softmax(self.gates[layer](xl), dim=-1)  # [B, K]
            # Σ_i G_i E_i as bmm [B, 1, K] @ [B, K, d], not einsum: einsum makes K = 1 an
            # elementwise product, and the matmul count (2Kd) must hold for every K
            xl = torch.bmm(gate.unsqueeze(1), experts).squeeze(1) + xl  # [B, d]
        return xl

    def flops(self) -> Flops:
        d, r, k = self.in_dim, self.rank, self.num_experts
        matmul = 2 * k * d * r + 2 * k * r * d + 2 * d * k + 2 * k * d  # V, U, gate logits, Σ_i G_i E_i
        elementwise = 2 * k * d * ELEMENTWISE  # + b, ⊙ x0 per expert
        elementwise += k * (TRANSCENDENTAL + 2 * ELEMENTWISE)  # softmax: exp, sum, divide
        elementwise += d * ELEMENTWISE  # residual
        layer = Flops(matmul=matmul, elementwise=elementwise)
        if self.nonlinear:
            layer = layer + Flops(matmul=2 * k * r * r)
            layer = layer + activation_flops(self.activation_name, 2 * k * r)
        return layer * self.num_layers
