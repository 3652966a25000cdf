"""ML-DCN: the masked low-rank cross network (Li et al., Pinterest, arXiv 2602.09194).

The paper's equations are not public; this is the reconstruction in the project's
DESIGN.md. Every choice the paper leaves open is an argument here, and its default
is set by ablation (``docs/design-decisions.md``).
"""

from __future__ import annotations

import torch
from torch import nn

from mldcn.layers.activation import (
    activation_preimage_of_one,
    init_linear,
    make_activation,
)
from mldcn.layers.flops import ELEMENTWISE, LAYER_NORM, Flops
from mldcn.layers.mask import InstanceGuidedMask

MASK_KINDS = ("instance", "static", "none")
MASK_SOURCES = ("x0", "xl")
MASK_SITES = ("rank", "input", "output")
MASK_ACTIVATIONS = ("identity", "sigmoid", "2sigmoid", "softplus")
LAYER_NORMS = ("none", "layer")


class StaticMask(nn.Module):
    """A learned mask ``g(c)`` that is the same for every example (the no-instance ablation)."""

    def __init__(self, out_dim: int, activation: str) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.activation_name = activation
        self.logits = nn.Parameter(torch.full((out_dim,), activation_preimage_of_one(activation)))
        self.activation = make_activation(activation)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.activation(self.logits).unsqueeze(0)  # [1, out_dim], broadcast over B

    def flops(self) -> Flops:
        return Flops()  # independent of the example: computed once per batch


class MaskedLowRankCrossNet(nn.Module):
    """ML-DCN cross network: a DCNv2 low-rank cross whose rank-r projection is masked
    per example.

        z_l     = V_l^T x_l                                  # [B, r]  r interaction directions
        m_l     = g(W2_l relu(W1_l s + c1_l) + c2_l)         # [B, r]  instance-conditioned mask
        x_{l+1} = x0 ⊙ (U_l (m_l ⊙ z_l) + b_l) + x_l         # [B, d]

    ``U_l, V_l ∈ R^{d×r}``, ``W1_l ∈ R^{t×d_s}``, ``W2_l ∈ R^{r×t}``, ``t = hidden_ratio · r``.
    With ``m ≡ 1`` (and ``layer_norm="none"``) the layer is DCNv2's low-rank cross
    exactly; the mask starts near 1 (W2 ≈ 0, g(c2) = 1), so an untrained ML-DCN
    starts close to DCNv2 low-rank.

    The cost over DCNv2 low-rank (4dr per layer) is the mask, 2·d_s·t + 2·t·r per
    layer (once for all layers with ``share_mask`` and ``mask_source="x0"``).

    Args:
        in_dim: d, width of x0.
        num_layers: L.
        rank: r.
        mask_kind: ``"instance"`` (the ML-DCN mask), ``"static"`` (a learned mask,
            the same for every example) or ``"none"`` (m ≡ 1: DCNv2 low-rank).
        mask_source: s = ``"x0"`` (the raw instance, MaskNet's choice) or ``"xl"``
            (the current layer's input).
        mask_site: where the mask multiplies: ``"rank"`` (m ⊙ z, m ∈ R^r),
            ``"input"`` (z = V^T (m ⊙ x_l), m ∈ R^d) or ``"output"``
            (x0 ⊙ (m ⊙ (U z + b)), m ∈ R^d).
        mask_activation: g: ``"identity"`` (can amplify and suppress),
            ``"sigmoid"``, ``"2sigmoid"`` (in (0, 2)) or ``"softplus"``.
        hidden_ratio: t / r, the mask's hidden width relative to the rank.
        share_mask: one mask network for all layers instead of one per layer.
        layer_norm: ``"layer"`` applies LayerNorm to each layer's output,
            ``x_{l+1} = LN(x0 ⊙ (...) + x_l)``; ``"none"`` is the bare equation.
            ``"layer"`` is the default: it gained about 0.005 AUC on the synthetic
            log over ``"none"`` (3 seeds, docs/design-decisions.md), and more with
            the mask than without it.

    Shape:
        ``[B, d]`` or ``[B, F, D]`` → ``[B, d]``

    Example:
        >>> net = MaskedLowRankCrossNet(in_dim=8, num_layers=2, rank=4)
        >>> net(torch.randn(5, 2, 4)).shape
        torch.Size([5, 8])
    """

    def __init__(
        self,
        in_dim: int,
        num_layers: int,
        rank: int,
        mask_kind: str = "instance",
        mask_source: str = "xl",
        mask_site: str = "rank",
        mask_activation: str = "identity",
        hidden_ratio: float = 1.0,
        share_mask: bool = False,
        layer_norm: str = "layer",
    ) -> None:
        super().__init__()
        _check_choice("mask_kind", mask_kind, MASK_KINDS)
        _check_choice("mask_source", mask_source, MASK_SOURCES)
        _check_choice("mask_site", mask_site, MASK_SITES)
        _check_choice("mask_activation", mask_activation, MASK_ACTIVATIONS)
        _check_choice("layer_norm", layer_norm, LAYER_NORMS)
        if in_dim < 1 or num_layers < 1 or rank < 1:
            raise ValueError(f"in_dim, num_layers, rank must be >= 1, got {in_dim}, {num_layers}, {rank}")
        if hidden_ratio <= 0:
            raise ValueError(f"hidden_ratio must be > 0, got {hidden_ratio}")
        self.in_dim = self.out_dim = in_dim
        self.num_layers, self.rank = num_layers, rank
        self.mask_kind, self.mask_source, self.mask_site = mask_kind, mask_source, mask_site
        self.mask_activation = mask_activation
        self.hidden_dim = max(1, round(hidden_ratio * rank))
        self.share_mask = share_mask

        self.down = nn.ModuleList(nn.Linear(in_dim, rank, bias=False) for _ in range(num_layers))  # V^T
        self.up = nn.ModuleList(nn.Linear(rank, in_dim) for _ in range(num_layers))  # U, b
        for linear in (*self.down, *self.up):
            init_linear(linear)

        self.mask_dim = rank if mask_site == "rank" else in_dim
        num_masks = 0 if mask_kind == "none" else (1 if share_mask else num_layers)
        self.masks = nn.ModuleList(self._make_mask() for _ in range(num_masks))
        self.norms = nn.ModuleList(
            nn.LayerNorm(in_dim) for _ in range(num_layers if layer_norm == "layer" else 0)
        )

    def _make_mask(self) -> nn.Module:
        if self.mask_kind == "static":
            return StaticMask(self.mask_dim, self.mask_activation)
        return InstanceGuidedMask(
            self.in_dim, self.hidden_dim, self.mask_dim, self.mask_activation, unit_init=True
        )

    def _mask_once(self) -> bool:
        """One mask evaluation serves every layer (shared and looking at x0)."""
        return self.share_mask and self.mask_source == "x0"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.flatten(1)  # [B, d]
        xl = x0
        m = self.masks[0](x0) if self.masks and self._mask_once() else None
        for layer in range(self.num_layers):
            if self.masks and not self._mask_once():
                mask = self.masks[0 if self.share_mask else layer]
                m = mask(x0 if self.mask_source == "x0" else xl)  # [B, r] or [B, d]
            if m is not None and self.mask_site == "input":
                z = self.down[layer](m * xl)  # [B, r]
            else:
                z = self.down[layer](xl)  # [B, r]
            if m is not None and self.mask_site == "rank":
                z = m * z
            cross = self.up[layer](z)  # [B, d]  U z + b
            if m is not None and self.mask_site == "output":
                cross = m * cross
            xl = x0 * cross + xl  # [B, d]
            if self.norms:
                xl = self.norms[layer](xl)
        return xl

    def flops(self) -> Flops:
        d, r = self.in_dim, self.rank
        per_layer = Flops(matmul=4 * d * r, elementwise=3 * d * ELEMENTWISE)  # as DCNv2 low-rank
        if self.mask_kind != "none":
            per_layer = per_layer + Flops(elementwise=self.mask_dim * ELEMENTWISE)  # m ⊙ ·
        if self.norms:
            per_layer = per_layer + Flops(elementwise=LAYER_NORM * d)
        mask_evaluations = 1 if self._mask_once() else self.num_layers
        masks = self.masks[0].flops() * mask_evaluations if self.masks else Flops()
        return per_layer * self.num_layers + masks


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
