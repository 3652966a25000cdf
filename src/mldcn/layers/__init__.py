"""The toolbox: one primitive per file, each with its paper's equation and shapes."""

from mldcn.layers.cross import CrossNet, LowRankCrossNet, MixtureCrossNet
from mldcn.layers.embedding import FeatureEmbedding
from mldcn.layers.flops import Flops
from mldcn.layers.head import FlattenFields, ParallelHead, StackedHead
from mldcn.layers.mask import (
    FieldLayerNorm,
    InstanceGuidedMask,
    MaskBlock,
    ParallelMaskNet,
    SerialMaskNet,
)
from mldcn.layers.mldcn import MaskedLowRankCrossNet, StaticMask
from mldcn.layers.mlp import MLP
from mldcn.layers.rankmixer import (
    FieldTokenizer,
    MultiHeadTokenMixing,
    PerTokenFFN,
    PerTokenSparseMoE,
    RankMixer,
    SparseMoERankMixer,
)
from mldcn.layers.wukong import (
    FactorizationMachineBlock,
    LinearCompressBlock,
    WuKong,
    WuKongLayer,
)

__all__ = [
    "CrossNet",
    "FactorizationMachineBlock",
    "FeatureEmbedding",
    "FieldLayerNorm",
    "FieldTokenizer",
    "FlattenFields",
    "Flops",
    "InstanceGuidedMask",
    "LinearCompressBlock",
    "LowRankCrossNet",
    "MLP",
    "MaskBlock",
    "MaskedLowRankCrossNet",
    "MixtureCrossNet",
    "MultiHeadTokenMixing",
    "ParallelHead",
    "ParallelMaskNet",
    "PerTokenFFN",
    "PerTokenSparseMoE",
    "RankMixer",
    "SerialMaskNet",
    "SparseMoERankMixer",
    "StackedHead",
    "StaticMask",
    "WuKong",
    "WuKongLayer",
]
