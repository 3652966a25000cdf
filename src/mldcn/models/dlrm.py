"""The DLRM family (Naumov et al., arXiv 1906.00091): pairwise dot products of the field
vectors, then the top ("over") MLP.

The dot products have no width, so the family's width is that of the first
``top_mlp_layers`` layers of the top MLP, which sit in the interaction module
(:class:`~mldcn.layers.dot.DLRMInteraction`); the shared stacked head finishes the top
MLP. DLRM's top MLP ``[w, h_1, ..., h_k] → 1`` is ``top_mlp_dim = w`` with
``HeadConfig(structure="stacked", hidden=(h_1, ..., h_k))``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mldcn.config import Config, ConfigError
from mldcn.layers.dot import DLRMInteraction
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class DLRMConfig(Config):
    """DLRM's dot interaction and the first layers of its top MLP; see
    :class:`~mldcn.layers.dot.DLRMInteraction`."""

    top_mlp_dim: int = 512
    top_mlp_layers: int = 1
    concat_embeddings: bool = True
    dropout: float = 0.0
    batch_norm: bool = False

    _positive = ("top_mlp_dim", "top_mlp_layers")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"DLRMConfig.dropout must be in [0, 1), got {self.dropout}")


@register_family(
    "dlrm",
    DLRMConfig,
    width="top_mlp_dim",
    description="DLRM: pairwise dot products of the fields, then the top MLP's first layers",
    depth="top_mlp_layers",
    layer=DLRMInteraction,
)
def build_dlrm(config: DLRMConfig, num_fields: int, dim: int) -> DLRMInteraction:
    return DLRMInteraction(num_fields, dim, **options(config))


register_model(
    "dlrm",
    ModelConfig("dlrm", DLRMConfig(), head=HeadConfig(structure="stacked")),
    "DLRM dot interaction with the embeddings, top MLP 512 then the 400x3 stacked head",
)
# BARS DLRM_frappe_x1: top MLP 400-400-400 (BN, dropout 0.4), no bottom MLP (Frappe has no
# numeric field), D = 10. Its best trial used interaction_op "cat" (the top MLP on the
# flattened embedding, no dot products); this preset keeps DLRM's dot products, beside
# the flattened embedding (concat_embeddings), so it contains that model as a special case.
register_model(
    "dlrm_frappe_bars",
    ModelConfig(
        "dlrm",
        DLRMConfig(top_mlp_dim=400, top_mlp_layers=1, concat_embeddings=True, dropout=0.4, batch_norm=True),
        embedding_dim=10,
        head=HeadConfig(structure="stacked", hidden=(400, 400), dropout=0.4, batch_norm=True),
    ),
    "BARS DLRM_frappe_x1 settings (top MLP 400x3 with BN, dropout 0.4, D=10) on the dot interaction",
)
