"""Reference models: logistic regression and a plain DNN (no explicit interaction)."""

from __future__ import annotations

from dataclasses import dataclass

from mldcn.config import Config
from mldcn.layers.head import FlattenFields
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import register_family, register_model


@dataclass(frozen=True)
class NoInteractionConfig(Config):
    """No interaction module: the head sees the flattened embedding x0."""


@register_family("dnn", NoInteractionConfig, width=None, description="no explicit interaction (DNN / LR)")
def build_flatten(config: NoInteractionConfig, num_fields: int, dim: int) -> FlattenFields:
    return FlattenFields(num_fields * dim)


register_model(
    "lr",
    ModelConfig("dnn", NoInteractionConfig(), embedding_dim=1, head=HeadConfig(structure="stacked", hidden=())),
    "Logistic regression: one weight per feature value (D=1), linear read-out",
)
register_model(
    "dnn",
    ModelConfig("dnn", NoInteractionConfig(), head=HeadConfig(structure="stacked")),
    "DNN 400x3 on the flattened embedding",
)
