"""Models: thin assemblies of layers, a registry of presets, FLOPs accounting."""

from mldcn.models import (  # noqa: F401  (registers families)
    autoint,
    baselines,
    dcnv2,
    deepfm,
    dlrm,
    finalmlp,
    gdcn,
    masknet,
    mldcn,
    rankmixer,
    wukong,
    xdeepfm,
)
from mldcn.models.config import HeadConfig, ModelConfig, model_config_from_dict
from mldcn.models.flops import ModelCost, measured_matmul_flops, model_cost
from mldcn.models.ranking import RankingModel
from mldcn.models.registry import (
    create_model,
    get_family,
    get_preset,
    list_families,
    list_models,
    register_family,
    register_model,
)

__all__ = [
    "HeadConfig",
    "ModelConfig",
    "ModelCost",
    "RankingModel",
    "create_model",
    "get_family",
    "get_preset",
    "list_families",
    "list_models",
    "measured_matmul_flops",
    "model_config_from_dict",
    "model_cost",
    "register_family",
    "register_model",
]
