"""The ML-DCN family (Li et al., Pinterest, arXiv 2602.09194; DESIGN.md reconstruction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mldcn.config import Config
from mldcn.layers.mldcn import MaskedLowRankCrossNet
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import register_family, register_model


@dataclass(frozen=True)
class MLDCNConfig(Config):
    """ML-DCN's masked low-rank cross network; see
    :class:`~mldcn.layers.mldcn.MaskedLowRankCrossNet` for each option."""

    num_layers: int = 3
    rank: int = 32
    mask_kind: Literal["instance", "static", "none"] = "instance"
    mask_source: Literal["x0", "xl"] = "xl"
    mask_site: Literal["rank", "input", "output"] = "rank"
    mask_activation: Literal["identity", "sigmoid", "2sigmoid", "softplus"] = "identity"
    hidden_ratio: float = 1.0
    share_mask: bool = False
    layer_norm: Literal["none", "layer"] = "layer"

    _positive = ("num_layers", "rank", "hidden_ratio")


@register_family(
    "mldcn", MLDCNConfig, width="rank", description="ML-DCN masked low-rank cross", depth="num_layers"
)
def build_mldcn(config: MLDCNConfig, num_fields: int, dim: int) -> MaskedLowRankCrossNet:
    return MaskedLowRankCrossNet(
        num_fields * dim,
        num_layers=config.num_layers,
        rank=config.rank,
        mask_kind=config.mask_kind,
        mask_source=config.mask_source,
        mask_site=config.mask_site,
        mask_activation=config.mask_activation,
        hidden_ratio=config.hidden_ratio,
        share_mask=config.share_mask,
        layer_norm=config.layer_norm,
    )


register_model(
    "mldcn",
    ModelConfig("mldcn", MLDCNConfig()),
    "ML-DCN (r=32, t=r, mask from x0 on the rank space), parallel with a 400x3 DNN",
)
register_model(
    "mldcn_stacked",
    ModelConfig("mldcn", MLDCNConfig(), head=HeadConfig(structure="stacked")),
    "ML-DCN stacked under a 400x3 DNN",
)
register_model(
    "mldcn_frappe",
    ModelConfig(
        "mldcn",
        MLDCNConfig(num_layers=4, rank=30, layer_norm="none"),
        embedding_dim=10,
        head=HeadConfig(structure="parallel", hidden=(400, 400, 400), dropout=0.4, batch_norm=True),
    ),
    "ML-DCN with the BARS DCNv2_frappe_x1 head and recipe (4 layers, r=t=30, no LayerNorm, D=10)",
)
