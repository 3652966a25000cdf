"""The ML-DCN family (Li et al., Pinterest, arXiv 2602.09194; DESIGN.md reconstruction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mldcn.config import Config
from mldcn.layers.mldcn import MaskedLowRankCrossNet
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.dcnv2 import FRAPPE_BARS_HEAD
from mldcn.models.multitask import MMoEConfig, PLEConfig, SharedBottomConfig
from mldcn.models.registry import options, register_family, register_model


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
    "mldcn",
    MLDCNConfig,
    width="rank",
    description="ML-DCN masked low-rank cross",
    depth="num_layers",
    layer=MaskedLowRankCrossNet,
)
def build_mldcn(config: MLDCNConfig, num_fields: int, dim: int) -> MaskedLowRankCrossNet:
    return MaskedLowRankCrossNet(num_fields * dim, **options(config))


register_model(
    "mldcn",
    ModelConfig("mldcn", MLDCNConfig()),
    "ML-DCN (r=32, t=r, mask from x_l on the rank space, LayerNorm), parallel with a 400x3 DNN",
)
# multi-task: ML-DCN as the trunk or the experts; any family takes the same `multitask` setting
_TOWER = HeadConfig(structure="stacked", hidden=(64,))
register_model(
    "mldcn_shared_bottom",
    ModelConfig("mldcn", MLDCNConfig(), head=_TOWER, multitask=SharedBottomConfig()),
    "multi-task: an ML-DCN trunk shared by the tasks, a 64-unit tower per task",
)
register_model(
    "mldcn_mmoe",
    ModelConfig("mldcn", MLDCNConfig(rank=16), head=_TOWER, multitask=MMoEConfig(num_experts=4)),
    "multi-task: MMoE with 4 ML-DCN experts (r=16), a softmax gate and a 64-unit tower per task",
)
register_model(
    "mldcn_ple",
    ModelConfig("mldcn", MLDCNConfig(rank=16), head=_TOWER, multitask=PLEConfig(shared_experts=2, task_experts=1)),
    "multi-task: PLE/CGC with 2 shared and 1 per-task ML-DCN experts (r=16), a tower per task",
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
        head=FRAPPE_BARS_HEAD,
    ),
    "ML-DCN with the BARS DCNv2_frappe_x1 head and recipe (4 layers, r=t=30, no LayerNorm, D=10)",
)
