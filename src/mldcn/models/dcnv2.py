"""DCNv2 families (Wang et al., arXiv 2008.13535): full-rank, low-rank, mixture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mldcn.config import Config
from mldcn.layers.cross import CrossNet, LowRankCrossNet, MixtureCrossNet
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class CrossConfig(Config):
    """Full-rank DCNv2 cross network."""

    num_layers: int = 3

    _positive = ("num_layers",)


@dataclass(frozen=True)
class LowRankCrossConfig(Config):
    """Low-rank DCNv2 cross network."""

    num_layers: int = 3
    rank: int = 32

    _positive = ("num_layers", "rank")


@dataclass(frozen=True)
class MixtureCrossConfig(Config):
    """DCNv2 mixture of low-rank experts."""

    num_layers: int = 3
    rank: int = 16
    num_experts: int = 4
    nonlinear: bool = False
    activation: Literal["relu", "tanh", "gelu", "sigmoid"] = "relu"

    _positive = ("num_layers", "rank", "num_experts")


@register_family("dcnv2", CrossConfig, width="num_layers", description="DCNv2 full-rank cross", layer=CrossNet)
def build_cross(config: CrossConfig, num_fields: int, dim: int) -> CrossNet:
    return CrossNet(num_fields * dim, **options(config))


@register_family(
    "dcnv2_lowrank",
    LowRankCrossConfig,
    width="rank",
    description="DCNv2 low-rank cross",
    depth="num_layers",
    layer=LowRankCrossNet,
)
def build_lowrank(config: LowRankCrossConfig, num_fields: int, dim: int) -> LowRankCrossNet:
    return LowRankCrossNet(num_fields * dim, **options(config))


@register_family(
    "dcnv2_mixture",
    MixtureCrossConfig,
    width="rank",
    description="DCNv2 mixture of low-rank experts",
    depth="num_layers",
    layer=MixtureCrossNet,
)
def build_mixture(config: MixtureCrossConfig, num_fields: int, dim: int) -> MixtureCrossNet:
    return MixtureCrossNet(num_fields * dim, **options(config))


register_model(
    "dcnv2",
    ModelConfig("dcnv2", CrossConfig()),
    "DCNv2 full-rank cross, parallel with a 400x3 DNN",
)
register_model(
    "dcnv2_lowrank",
    ModelConfig("dcnv2_lowrank", LowRankCrossConfig()),
    "DCNv2 low-rank cross (r=32), parallel with a 400x3 DNN",
)
register_model(
    "dcnv2_mixture",
    ModelConfig("dcnv2_mixture", MixtureCrossConfig(nonlinear=True)),
    "DCNv2 mixture of 4 low-rank experts with r x r nonlinearity",
)
register_model(
    "dcnv2_stacked",
    ModelConfig("dcnv2", CrossConfig(), head=HeadConfig(structure="stacked")),
    "DCNv2 full-rank cross stacked under a 400x3 DNN",
)
#: BARS DCNv2_frappe_x1's DNN, which the GDCN and ML-DCN Frappe presets take too (like for like)
FRAPPE_BARS_HEAD = HeadConfig(structure="parallel", hidden=(400, 400, 400), dropout=0.4, batch_norm=True)
register_model(
    "dcnv2_frappe_bars",
    ModelConfig("dcnv2", CrossConfig(num_layers=4), embedding_dim=10, head=FRAPPE_BARS_HEAD),
    "BARS DCNv2_frappe_x1 settings (4 full-rank layers, DNN 400x3, BN, dropout 0.4, D=10)",
)
