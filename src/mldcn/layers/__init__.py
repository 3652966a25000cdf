"""The toolbox: one primitive per file, each with its paper's equation and shapes."""

from mldcn.layers.cross import CrossNet, LowRankCrossNet, MixtureCrossNet
from mldcn.layers.embedding import FeatureEmbedding
from mldcn.layers.flops import Flops
from mldcn.layers.head import FlattenFields, ParallelHead, StackedHead
from mldcn.layers.mask import FieldLayerNorm, InstanceGuidedMask, MaskBlock, ParallelMaskNet, SerialMaskNet
from mldcn.layers.mldcn import MaskedLowRankCrossNet, StaticMask
from mldcn.layers.mlp import MLP

__all__ = [
    "CrossNet",
    "FeatureEmbedding",
    "FieldLayerNorm",
    "FlattenFields",
    "Flops",
    "InstanceGuidedMask",
    "LowRankCrossNet",
    "MLP",
    "MaskBlock",
    "MaskedLowRankCrossNet",
    "MixtureCrossNet",
    "ParallelHead",
    "ParallelMaskNet",
    "SerialMaskNet",
    "StackedHead",
    "StaticMask",
]
