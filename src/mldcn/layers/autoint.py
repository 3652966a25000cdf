"""AutoInt (Song et al., "AutoInt: Automatic Feature Interaction Learning via
Self-Attentive Neural Networks", CIKM 2019, arXiv 1810.11921).

Stacked multi-head self-attention over the field embeddings: in each interacting
layer every field attends to every field, so layer l sees feature combinations of
order up to l + 1, and the attention weights say which fields a field combined with.

Notation: B batch, F fields, D embedding size; a layer maps ``[B, F, i]`` to
``[B, F, a]`` with a = ``attention_dim`` = H heads × h = a / H per head; the first
layer has i = D, the others i = a.

``autoint_layer_flops`` and ``autoint_flops`` are the single place the FLOPs
formulas live: the modules' ``flops()`` call them, and the family uses them to size
AutoInt to a budget without building it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mldcn.layers.activation import init_linear
from mldcn.layers.dropout import Dropout
from mldcn.layers.flops import ELEMENTWISE, LAYER_NORM, TRANSCENDENTAL, Flops

#: softmax per score: exp, the row sum, the division
SOFTMAX = TRANSCENDENTAL + 2 * ELEMENTWISE


def _projects_residual(in_dim: int, attention_dim: int, use_residual: bool) -> bool:
    return use_residual and in_dim != attention_dim


def autoint_layer_flops(
    num_fields: int,
    in_dim: int,
    attention_dim: int,
    num_heads: int,
    use_residual: bool = True,
    use_scale: bool = False,
    layer_norm: bool = False,
) -> Flops:
    """FLOPs per example of :class:`MultiHeadSelfAttention` (see there for the terms)."""
    f, i, a, heads = num_fields, in_dim, attention_dim, num_heads
    matmul = 3 * 2 * f * i * a  # Q, K, V = X W_Q, X W_K, X W_V
    matmul += 2 * f * f * a  # scores Q K^T: H heads of F×h @ h×F
    matmul += 2 * f * f * a  # A V: H heads of F×F @ F×h
    if _projects_residual(i, a, use_residual):
        matmul += 2 * f * i * a  # W_Res X
    scores = heads * f * f
    elementwise = SOFTMAX * scores + (ELEMENTWISE * scores if use_scale else 0)  # (/ sqrt(h)), softmax
    elementwise += ELEMENTWISE * f * a if use_residual else 0  # + residual
    elementwise += LAYER_NORM * f * a if layer_norm else 0
    elementwise += ELEMENTWISE * f * a  # ReLU
    return Flops(matmul=matmul, elementwise=elementwise)


def autoint_flops(
    num_fields: int,
    dim: int,
    num_layers: int,
    attention_dim: int,
    num_heads: int,
    use_residual: bool = True,
    use_scale: bool = False,
    layer_norm: bool = False,
) -> Flops:
    """FLOPs per example of :class:`AutoInt`: the first layer reads D, the others a."""
    flops = Flops()
    width = dim
    for _ in range(num_layers):
        flops = flops + autoint_layer_flops(
            num_fields, width, attention_dim, num_heads, use_residual, use_scale, layer_norm
        )
        width = attention_dim
    return flops


def _check_heads(attention_dim: int, num_heads: int) -> None:
    if attention_dim < 1 or num_heads < 1:
        raise ValueError(f"attention_dim and num_heads must be >= 1, got {attention_dim}, {num_heads}")
    if attention_dim % num_heads:
        raise ValueError(
            f"attention_dim={attention_dim} must be a multiple of num_heads={num_heads} "
            "(each head gets attention_dim / num_heads dimensions)"
        )


class MultiHeadSelfAttention(nn.Module):
    """One AutoInt interacting layer: multi-head self-attention across fields.

    For head η (weights ``W_Q^η, W_K^η, W_V^η ∈ R^{i×h}``) and fields m, k:

        ψ^η(e_m, e_k) = <e_m W_Q^η, e_k W_K^η> (/ sqrt(h) with use_scale)   # [B, H, F, F]
        α^η_{m,k}     = softmax_k ψ^η(e_m, e_k)
        ẽ^η_m         = Σ_k α^η_{m,k} e_k W_V^η                             # [B, H, F, h]
        ẽ_m           = ẽ^1_m ⊕ ... ⊕ ẽ^H_m                                 # [B, F, a]
        e^Res_m       = ReLU(LN(ẽ_m + e_m W_Res))                           # [B, F, a]

    as in the paper's equations (5)-(8), with the heads' weights side by side in one
    ``[i, a]`` matrix each (``query``, ``key``, ``value``). The paper always has
    ``W_Res``; here, as in FuxiCTR's ``MultiHeadSelfAttention`` (and so in the
    BARS runs), ``W_Res`` exists only where ``i != a`` and the residual is ``e_m``
    itself otherwise. ``use_scale`` (scores / sqrt(h)) and ``layer_norm`` (over a,
    before the ReLU) are FuxiCTR's options, not the paper's; ``dropout`` is applied
    to the attention weights α, as FuxiCTR does.

    Guidance: the paper used 3 layers of 2 heads with h = 32 on d = 16 embeddings;
    BARS's Frappe run 5 layers of 4 heads with a = 128, scaled, with LayerNorm.
    Cost per layer: 6Fia + 4F²a matmul FLOPs (+ 2Fia for W_Res).

    Args:
        num_fields: F.
        in_dim: i, width of each input field vector.
        attention_dim: a, output width of each field vector (all heads together).
        num_heads: H; a must be a multiple of H.
        use_residual: add the residual ``e_m`` (projected by W_Res where i != a).
        use_scale: divide the scores by sqrt(h).
        layer_norm: LayerNorm over a after the residual, before the ReLU.
        dropout: dropout on the attention weights.

    Shape:
        ``[B, F, i]`` → ``[B, F, a]``

    Example:
        >>> layer = MultiHeadSelfAttention(num_fields=3, in_dim=4, attention_dim=6, num_heads=2)
        >>> layer(torch.randn(2, 3, 4)).shape
        torch.Size([2, 3, 6])
        >>> layer.residual is not None  # i = 4 != a = 6: the residual is projected
        True
    """

    def __init__(
        self,
        num_fields: int,
        in_dim: int,
        attention_dim: int,
        num_heads: int = 1,
        use_residual: bool = True,
        use_scale: bool = False,
        layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_fields < 1 or in_dim < 1:
            raise ValueError(f"num_fields and in_dim must be >= 1, got {num_fields}, {in_dim}")
        _check_heads(attention_dim, num_heads)
        self.num_fields, self.in_dim, self.attention_dim = num_fields, in_dim, attention_dim
        self.num_heads, self.head_dim = num_heads, attention_dim // num_heads
        self.use_residual, self.use_scale, self.layer_norm = use_residual, use_scale, layer_norm
        self.query = nn.Linear(in_dim, attention_dim, bias=False)  # W_Q, heads side by side
        self.key = nn.Linear(in_dim, attention_dim, bias=False)  # W_K
        self.value = nn.Linear(in_dim, attention_dim, bias=False)  # W_V
        self.residual = (
            nn.Linear(in_dim, attention_dim, bias=False)
            if _projects_residual(in_dim, attention_dim, use_residual)
            else None
        )  # W_Res
        for linear in (self.query, self.key, self.value, self.residual):
            if linear is not None:
                init_linear(linear)
        self.norm = nn.LayerNorm(attention_dim) if layer_norm else None
        self.dropout = Dropout(dropout)
        self.out_dim = attention_dim

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, F, a] -> [B, F, H, h] -> [B, H, F, h]
        return x.view(-1, self.num_fields, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, H, F, h] @ [B, H, h, F] -> [B, H, F, F]
        if self.use_scale:
            scores = scores / math.sqrt(self.head_dim)
        weights = self.dropout(torch.softmax(scores, dim=-1))  # α, rows sum to 1
        out = torch.matmul(weights, v)  # [B, H, F, F] @ [B, H, F, h] -> [B, H, F, h]
        out = out.transpose(1, 2).reshape(-1, self.num_fields, self.attention_dim)  # heads concatenated, [B, F, a]
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        if self.norm is not None:
            out = self.norm(out)
        return torch.relu(out)

    def flops(self) -> Flops:
        return autoint_layer_flops(
            self.num_fields,
            self.in_dim,
            self.attention_dim,
            self.num_heads,
            self.use_residual,
            self.use_scale,
            self.layer_norm,
        )


class AutoInt(nn.Module):
    """AutoInt's interacting layers on the field embeddings, flattened.

        X_0     = E                                        # [B, F, D]
        X_{l+1} = MultiHeadSelfAttention_l(X_l)            # [B, F, a]
        h       = flatten(X_L)                             # [B, F·a]

    The paper reads h out with a logistic layer (its equation (9), ``ŷ = σ(w^T h + b)``:
    in mldcn a stacked head with no hidden layer); AutoInt+ adds a DNN on the
    flattened embedding and sums the two logits (FuxiCTR: ``fc(h) + DNN(x0)``), which
    is the parallel head ``w^T [h ; MLP(x0)] + b`` (the same function, with one bias
    instead of two).

    Args:
        num_fields: F.
        dim: D.
        num_layers: L interacting layers.
        attention_dim: a, width per field of every layer's output (all heads).
        num_heads: H per layer; a must be a multiple of H.
        use_residual, use_scale, layer_norm, dropout: see :class:`MultiHeadSelfAttention`.

    Shape:
        ``[B, F, D]`` → ``[B, F·a]``

    Example:
        >>> net = AutoInt(num_fields=5, dim=4, num_layers=2, attention_dim=8, num_heads=2)
        >>> net(torch.randn(3, 5, 4)).shape
        torch.Size([3, 40])
        >>> net.out_dim
        40
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        num_layers: int = 3,
        attention_dim: int = 64,
        num_heads: int = 2,
        use_residual: bool = True,
        use_scale: bool = False,
        layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if min(num_fields, dim, num_layers) < 1:
            raise ValueError(f"num_fields, dim, num_layers must be >= 1, got {num_fields}, {dim}, {num_layers}")
        _check_heads(attention_dim, num_heads)
        self.num_fields, self.dim, self.num_layers = num_fields, dim, num_layers
        self.attention_dim, self.num_heads = attention_dim, num_heads
        self.use_residual, self.use_scale, self.layer_norm = use_residual, use_scale, layer_norm
        self.layers = nn.ModuleList(
            MultiHeadSelfAttention(
                num_fields,
                dim if layer == 0 else attention_dim,
                attention_dim,
                num_heads,
                use_residual,
                use_scale,
                layer_norm,
                dropout,
            )
            for layer in range(num_layers)
        )
        self.in_dim = num_fields * dim
        self.out_dim = num_fields * attention_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)  # [B, F, i] -> [B, F, a]
        return x.flatten(1)  # [B, F·a]

    def flops(self) -> Flops:
        return autoint_flops(
            self.num_fields,
            self.dim,
            self.num_layers,
            self.attention_dim,
            self.num_heads,
            self.use_residual,
            self.use_scale,
            self.layer_norm,
        )
