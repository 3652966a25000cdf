"""mldcn: ML-DCN and its rivals for CTR prediction, compared at matched FLOPs."""

from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField
from mldcn.models import (
    ModelConfig,
    RankingModel,
    create_model,
    list_models,
    model_cost,
)

__version__ = "0.1.0"

__all__ = [
    "CategoricalField",
    "FeatureSpec",
    "ModelConfig",
    "NumericField",
    "RankingModel",
    "SequenceField",
    "create_model",
    "list_models",
    "model_cost",
]
