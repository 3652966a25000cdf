"""ML-DCN: the masked low-rank cross network (Li et al., Pinterest, arXiv 2602.09194).

The paper's equations are not public; this is the reconstruction in the project's
DESIGN.md. Every choice the paper leaves open is an argument here, and its default
is set by ablation (``docs/design-decisions.md``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

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


class StackedMask(nn.Module):
    """An instance mask whose first product ``W1 x_l`` runs stacked with the cross layer's ``V^T x_l``.

        m = g(W2 relu(h + c1) + c2),   h = W1 x_l            # [B, t] -> [B, mask_dim]

    ``W1`` is the lower block of the layer's ``[V^T ; W1]`` weight
    (:class:`MaskedLowRankCrossNet` ``.down[l].weight[rank:]``); this module holds
    the rest: ``c1`` (``hidden_bias``, added by the cross net), ``W2, c2`` (``output``). It is
    :class:`~mldcn.layers.mask.InstanceGuidedMask` with the first product taken
    out, built from one so that both start from the same weights.

    Shape:
        hidden ``[B, t]`` (``relu(W1 x_l + c1)``, computed by the cross net) → ``[B, mask_dim]``
    """

    def __init__(self, mask: InstanceGuidedMask) -> None:
        super().__init__()
        self.in_dim, self.hidden_dim, self.out_dim = mask.in_dim, mask.hidden_dim, mask.out_dim
        self.activation_name = mask.activation_name
        self.hidden_bias = nn.Parameter(mask.hidden.bias.detach().clone())  # c1 [t]
        self.output = mask.output  # W2 [mask_dim, t], c2 [mask_dim]
        self.activation = mask.activation

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        m = F.linear(hidden, self.output.weight, self.output.bias)  # [B, mask_dim]  W2 hidden + c2
        return m if self.activation_name == "identity" else self.activation(m)

    # the unstacked mask's cost, W1's share of the stacked product included, from the same sizes
    flops = InstanceGuidedMask.flops


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

    **How it runs** (the same equations, fewer operators). When each layer's mask
    reads x_l (the default) and multiplies the rank space or the output, ``V_l^T x_l``
    and ``W1_l x_l`` read the same input: the layer holds one weight
    ``down[l].weight = [V_l^T ; W1_l]`` (``[r + t, d]``) and computes both in one
    matrix product, split into z ``[B, r]`` and h ``[B, t]``; the mask
    (:class:`StackedMask`) holds ``c1, W2, c2``. A shared mask that reads x0 is
    evaluated once for all layers, a static mask once per forward. The residual
    is one ``addcmul`` (``x_l + x0 ⊙ cross``) and the LayerNorm a functional call.
    A state dict of the unstacked layout (``down.l.weight`` ``[r, d]`` and
    ``masks.l.hidden.{weight,bias}``, as ML-DCN saved it before the stacking, and
    as the options that cannot stack keep it) is converted when it is loaded, and
    the other way round.

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
        >>> net.down[0].weight.shape  # [V^T ; W1]: r + t rows
        torch.Size([8, 8])
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
        #: each layer's own mask reads x_l and does not scale x_l: W1_l stacks under V_l^T
        self.stacked = mask_kind == "instance" and mask_source == "xl" and not share_mask and mask_site != "input"

        # The weights are made and initialised in the unstacked layout, then stacked, so an
        # ML-DCN starts from the same weights for the same seed whatever the layout.
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
        if self.stacked:
            for layer, (down, mask) in enumerate(zip(self.down, self.masks)):
                down.weight = nn.Parameter(torch.cat([down.weight.detach(), mask.hidden.weight.detach()]))  # [r+t, d]
                down.out_features = rank + self.hidden_dim
                self.masks[layer] = StackedMask(mask)
        self.register_load_state_dict_pre_hook(_convert_layout)

    def _make_mask(self) -> nn.Module:
        if self.mask_kind == "static":
            return StaticMask(self.mask_dim, self.mask_activation)
        return InstanceGuidedMask(
            self.in_dim, self.hidden_dim, self.mask_dim, self.mask_activation, unit_init=True
        )

    def _mask_once(self) -> bool:
        """One mask evaluation serves every layer (shared and looking at x0, or static and shared)."""
        return self.share_mask and (self.mask_source == "x0" or self.mask_kind == "static")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.flatten(1)  # [B, d]
        if self.stacked:
            return self._forward_stacked(x0)
        xl = x0
        site = self.mask_site
        once = self.masks[0](x0) if self.masks and self._mask_once() else None  # [B or 1, mask_dim]
        for layer in range(self.num_layers):
            m = once
            if m is None and self.masks:
                mask = self.masks[0 if self.share_mask else layer]
                m = mask(x0 if self.mask_source == "x0" else xl)  # [B, r] or [B, d]
            z = F.linear(xl if m is None or site != "input" else m * xl, self.down[layer].weight)  # [B, r]
            if m is not None and site == "rank":
                z = m * z
            up = self.up[layer]
            cross = F.linear(z, up.weight, up.bias)  # [B, d]  U z + b
            if m is not None and site == "output":
                cross = m * cross
            # not addcmul: its fused multiply-add rounds differently from DCNv2 low-rank's
            # x0 * cross + xl, and with m ≡ 1 the two must agree bit for bit
            xl = x0 * cross + xl  # [B, d]
            if self.norms:
                xl = _layer_norm(xl, self.norms[layer])
        return xl

    def _forward_stacked(self, x0: torch.Tensor) -> torch.Tensor:
        """Each layer's own mask reads x_l; W1_l is stacked under V_l^T in ``down[l].weight``."""
        r, t, rank_site = self.rank, self.hidden_dim, self.mask_site == "rank"
        # Without autograd (inference_mode, no_grad): one product for z and h, and the
        # element-wise steps in place on this layer's fresh buffers (the same values).
        # With autograd: the two row blocks of the same weight as two products, because the
        # backward of one stacked product concatenates the gradients of z and h, a copy of
        # [B, r + t] per layer that cost more than the single product saved (measured).
        inplace = not torch.is_grad_enabled()
        norms = self.norms if self.norms else [None] * self.num_layers
        xl = x0
        for down, up, mask, norm in zip(self.down, self.up, self.masks, norms):
            weight = down.weight  # [r + t, d]  [V^T ; W1]
            c1 = mask.hidden_bias
            if inplace:
                z, h = F.linear(xl, weight).split((r, t), dim=1)  # [B, r], [B, t]  one product
                hidden = h.add_(c1 if c1.dtype == h.dtype else c1.to(h.dtype)).relu_()  # relu(W1 x_l + c1)
            else:
                z = F.linear(xl, weight[:r])  # [B, r]  V^T x_l
                hidden = torch.relu(F.linear(xl, weight[r:], c1))  # [B, t]  relu(W1 x_l + c1)
            m = mask(hidden)  # [B, mask_dim]
            if rank_site:
                cross = F.linear(m.mul_(z) if inplace else m * z, up.weight, up.bias)  # [B, d]  U (m ⊙ z) + b
            else:
                cross = F.linear(z, up.weight, up.bias)  # [B, d]
                cross = cross.mul_(m) if inplace else m * cross  # m ⊙ (U z + b)
            xl = cross.mul_(x0).add_(xl) if inplace else x0 * cross + xl  # [B, d]
            if norm is not None:
                xl = _layer_norm(xl, norm)
        return xl

    def flops(self) -> Flops:
        d, r = self.in_dim, self.rank
        per_layer = Flops(matmul=4 * d * r, elementwise=3 * d * ELEMENTWISE)  # as DCNv2 low-rank
        if self.mask_kind != "none":
            per_layer = per_layer + Flops(elementwise=self.mask_dim * ELEMENTWISE)  # m ⊙ ·
        if self.norms:
            per_layer = per_layer + Flops(elementwise=LAYER_NORM * d)
        # a shared x0 mask is evaluated once; a static mask costs nothing per example either way
        mask_evaluations = 1 if self.share_mask and self.mask_source == "x0" else self.num_layers
        masks = self.masks[0].flops() * mask_evaluations if self.masks else Flops()
        return per_layer * self.num_layers + masks


def _convert_layout(module: MaskedLowRankCrossNet, state_dict, prefix: str, *args) -> None:
    """Bring a state dict to ``module``'s layout, in place: W1 stacked under V^T
    (``down.l.weight`` ``[r + t, d]``, ``masks.l.hidden_bias``) or apart
    (``down.l.weight`` ``[r, d]``, ``masks.l.hidden.{weight,bias}``)."""
    if module.mask_kind != "instance" or module.share_mask:
        return
    r = module.rank
    for layer in range(module.num_layers):
        down, mask = f"{prefix}down.{layer}.weight", f"{prefix}masks.{layer}."
        if down not in state_dict:
            continue
        if module.stacked and mask + "hidden.weight" in state_dict:
            state_dict[down] = torch.cat([state_dict[down], state_dict.pop(mask + "hidden.weight")])  # [V^T ; W1]
            state_dict[mask + "hidden_bias"] = state_dict.pop(mask + "hidden.bias")  # c1
        elif not module.stacked and mask + "hidden_bias" in state_dict:
            stacked = state_dict[down]
            state_dict[down], state_dict[mask + "hidden.weight"] = stacked[:r], stacked[r:]
            state_dict[mask + "hidden.bias"] = state_dict.pop(mask + "hidden_bias")


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)  # no module call


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
