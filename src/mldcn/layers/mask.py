"""MaskNet (Wang et al., "MaskNet: Introducing Feature-Wise Multiplication to CTR
Ranking Models by Instance-Guided Mask", DLP-KDD 2021, arXiv 2102.07619).

The instance-guided mask is also ML-DCN's mask network
(:class:`~mldcn.layers.mldcn.MaskedLowRankCrossNet`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mldcn.layers.activation import (
    activation_preimage_of_one,
    init_linear,
    make_activation,
)
from mldcn.layers.dropout import Dropout
from mldcn.layers.flops import (
    ELEMENTWISE,
    LAYER_NORM,
    Flops,
    activation_flops,
    linear_flops,
)


class InstanceGuidedMask(nn.Module):
    """``m = g(W2 relu(W1 s + c1) + c2)``: a per-example vector that scales another one.

    MaskNet uses g = identity with s the flattened embedding; values above 1
    amplify, values near 0 suppress. With ``unit_init`` the mask starts near 1
    (c2 with g(c2) = 1 and W2 ~ N(0, 0.01²), so m = 1 + O(0.01) for any input and
    exactly 1 where the hidden layer is 0): a layer it scales then starts almost as
    if unmasked. ``sigmoid`` cannot reach 1 and starts at 1/2.

    Args:
        in_dim: width of the source s.
        hidden_dim: t, width of the hidden layer.
        out_dim: width of the mask.
        activation: g (identity, sigmoid, 2sigmoid, softplus, ...).
        unit_init: start the mask at 1 (W2 ~ N(0, 0.01²), c2 = g⁻¹(1)).

    Shape:
        ``[B, in_dim]`` → ``[B, out_dim]``

    Example:
        >>> mask = InstanceGuidedMask(6, 4, 3, unit_init=True)
        >>> mask(torch.zeros(2, 6))
        tensor([[1., 1., 1.],
                [1., 1., 1.]], grad_fn=<AddmmBackward0>)
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        activation: str = "identity",
        unit_init: bool = False,
    ) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(f"mask dims must be >= 1, got {in_dim}, {hidden_dim}, {out_dim}")
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.activation_name = activation
        self.hidden = nn.Linear(in_dim, hidden_dim)  # W1, c1
        self.output = nn.Linear(hidden_dim, out_dim)  # W2, c2
        self.activation = make_activation(activation)
        init_linear(self.hidden)
        init_linear(self.output)
        if unit_init:
            nn.init.normal_(self.output.weight, std=0.01)
            nn.init.constant_(self.output.bias, activation_preimage_of_one(activation))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.activation(self.output(torch.relu(self.hidden(s))))

    def flops(self) -> Flops:
        return (
            linear_flops(self.in_dim, self.hidden_dim)
            + activation_flops("relu", self.hidden_dim)
            + linear_flops(self.hidden_dim, self.out_dim)
            + activation_flops(self.activation_name, self.out_dim)
        )


class FieldLayerNorm(nn.Module):
    """MaskNet's LN_EMB: LayerNorm over D for each field, with per-field scale and shift.

    Shape:
        ``[B, F, D]`` → ``[B, F, D]``
    """

    def __init__(self, num_fields: int, dim: int) -> None:
        super().__init__()
        self.num_fields, self.dim = num_fields, dim
        self.weight = nn.Parameter(torch.ones(num_fields, dim))
        self.bias = nn.Parameter(torch.zeros(num_fields, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,)) * self.weight + self.bias

    def flops(self) -> Flops:
        return Flops(elementwise=LAYER_NORM * self.num_fields * self.dim)


class MaskBlock(nn.Module):
    """MaskBlock: ``out = dropout(relu(LN(W (mask(e) ⊙ h))))``.

    ``e`` is the flattened embedding (the mask always looks at the raw instance);
    ``h`` is the block input: the (normalised) embedding for a MaskBlock on
    feature embedding, the previous block's output for a MaskBlock on MaskBlock.
    The mask's hidden width is ``reduction_ratio * in_dim``, rounded (FuxiCTR's convention).

    Args:
        emb_dim: width of e.
        in_dim: width of h (and of the mask).
        out_dim: output width.
        reduction_ratio: mask hidden width / in_dim.
        layer_norm: LN_HID after the projection.
        dropout: dropout after the activation.

    Shape:
        e ``[B, emb_dim]``, h ``[B, in_dim]`` → ``[B, out_dim]``
    """

    def __init__(
        self,
        emb_dim: int,
        in_dim: int,
        out_dim: int,
        reduction_ratio: float = 1.0,
        layer_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mask = InstanceGuidedMask(emb_dim, max(1, round(in_dim * reduction_ratio)), in_dim)
        self.projection = nn.Linear(in_dim, out_dim, bias=False)
        init_linear(self.projection)
        self.norm = nn.LayerNorm(out_dim) if layer_norm else nn.Identity()
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        masked = self.mask(e) * h  # [B, in_dim]
        return self.dropout(torch.relu(self.norm(self.projection(masked))))  # [B, out_dim]

    def flops(self) -> Flops:
        flops = self.mask.flops() + Flops(elementwise=self.in_dim * ELEMENTWISE)
        flops = flops + linear_flops(self.in_dim, self.out_dim, bias=False)
        if isinstance(self.norm, nn.LayerNorm):
            flops = flops + Flops(elementwise=LAYER_NORM * self.out_dim)
        return flops + activation_flops("relu", self.out_dim)


class _MaskNetBase(nn.Module):
    def __init__(self, num_fields: int, dim: int, emb_layer_norm: bool) -> None:
        super().__init__()
        self.emb_dim = num_fields * dim
        self.emb_norm = FieldLayerNorm(num_fields, dim) if emb_layer_norm else None

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = x.flatten(1)  # [B, F, D] -> [B, d]
        h = self.emb_norm(x).flatten(1) if self.emb_norm is not None else e  # [B, d]
        return e, h

    def _emb_flops(self) -> Flops:
        return self.emb_norm.flops() if self.emb_norm is not None else Flops()


class SerialMaskNet(_MaskNetBase):
    """Serial MaskNet: a MaskBlock on the embedding, then MaskBlocks on MaskBlocks.

        h_1 = MaskBlock_1(e, LN_EMB(e));   h_{i+1} = MaskBlock_{i+1}(e, h_i)

    Args:
        num_fields: F.
        dim: D.
        block_dims: output width of each block.
        reduction_ratio, layer_norm, dropout: as in :class:`MaskBlock`.
        emb_layer_norm: apply LN_EMB to the embedding the first block reads.

    Shape:
        ``[B, F, D]`` → ``[B, block_dims[-1]]``

    Example:
        >>> SerialMaskNet(3, 4, block_dims=(8, 6))(torch.randn(2, 3, 4)).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        block_dims: Sequence[int],
        reduction_ratio: float = 1.0,
        layer_norm: bool = True,
        emb_layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_fields, dim, emb_layer_norm)
        if not block_dims:
            raise ValueError("SerialMaskNet needs at least one block")
        widths = [self.emb_dim, *block_dims]
        self.blocks = nn.ModuleList(
            MaskBlock(self.emb_dim, widths[i], widths[i + 1], reduction_ratio, layer_norm, dropout)
            for i in range(len(block_dims))
        )
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, h = self._inputs(x)
        for block in self.blocks:
            h = block(e, h)
        return h

    def flops(self) -> Flops:
        flops = self._emb_flops()
        for block in self.blocks:
            flops = flops + block.flops()
        return flops


class ParallelMaskNet(_MaskNetBase):
    """Parallel MaskNet: ``num_blocks`` MaskBlocks on the embedding, concatenated.

        out = [MaskBlock_1(e, LN_EMB(e)); ...; MaskBlock_K(e, LN_EMB(e))]

    MaskNet feeds ``out`` to an MLP: use the stacked head.

    Shape:
        ``[B, F, D]`` → ``[B, num_blocks * block_dim]``

    Example:
        >>> ParallelMaskNet(3, 4, num_blocks=2, block_dim=5)(torch.randn(2, 3, 4)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        num_blocks: int,
        block_dim: int,
        reduction_ratio: float = 1.0,
        layer_norm: bool = True,
        emb_layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_fields, dim, emb_layer_norm)
        if num_blocks < 1 or block_dim < 1:
            raise ValueError(f"num_blocks and block_dim must be >= 1, got {num_blocks}, {block_dim}")
        self.blocks = nn.ModuleList(
            MaskBlock(self.emb_dim, self.emb_dim, block_dim, reduction_ratio, layer_norm, dropout)
            for _ in range(num_blocks)
        )
        self.out_dim = num_blocks * block_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, h = self._inputs(x)
        return torch.cat([block(e, h) for block in self.blocks], dim=-1)  # [B, K * block_dim]

    def flops(self) -> Flops:
        flops = self._emb_flops()
        for block in self.blocks:
            flops = flops + block.flops()
        return flops
