"""The toolbox: one primitive per file, each with its paper's equation and shapes."""

from mldcn.layers.autoint import AutoInt, MultiHeadSelfAttention
from mldcn.layers.cin import CompressedInteractionNet, XDeepFMInteraction
from mldcn.layers.cross import CrossNet, LowRankCrossNet, MixtureCrossNet
from mldcn.layers.dot import DLRMInteraction, DotInteraction
from mldcn.layers.embedding import FeatureEmbedding
from mldcn.layers.finalmlp import BilinearFusion, FeatureGate, FinalMLP
from mldcn.layers.flops import Flops
from mldcn.layers.fm import FactorizationMachine, FirstOrderTerm
from mldcn.layers.gdcn import GatedCrossNet
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
    "AutoInt",
    "BilinearFusion",
    "CompressedInteractionNet",
    "CrossNet",
    "DLRMInteraction",
    "DotInteraction",
    "FactorizationMachine",
    "FactorizationMachineBlock",
    "FeatureEmbedding",
    "FeatureGate",
    "FieldLayerNorm",
    "FieldTokenizer",
    "FinalMLP",
    "FirstOrderTerm",
    "FlattenFields",
    "Flops",
    "GatedCrossNet",
    "InstanceGuidedMask",
    "LinearCompressBlock",
    "LowRankCrossNet",
    "MaskBlock",
    "MaskedLowRankCrossNet",
    "MixtureCrossNet",
    "MLP",
    "MultiHeadSelfAttention",
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
    "XDeepFMInteraction",
]
