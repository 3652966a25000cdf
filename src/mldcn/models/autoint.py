"""The AutoInt family (Song et al., CIKM 2019, arXiv 1810.11921): multi-head self-attention
over the field embeddings; AutoInt+ is AutoInt in parallel with a DNN."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mldcn.config import Config, ConfigError
from mldcn.layers.autoint import AutoInt
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class AutoIntConfig(Config):
    """AutoInt's interacting layers; see :class:`~mldcn.layers.autoint.AutoInt`.

    ``attention_dim`` is the width of a layer's output per field, all heads together
    (FuxiCTR's convention; the paper's d' is the width of one head,
    ``attention_dim / num_heads``). Defaults are the paper's: 3 layers of 2 heads of
    32, residual, no scaling, no LayerNorm.
    """

    num_layers: int = 3
    attention_dim: int = 64
    num_heads: int = 2
    use_residual: bool = True
    use_scale: bool = False
    layer_norm: bool = False
    dropout: float = 0.0

    _positive = ("num_layers", "attention_dim", "num_heads")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_dim % self.num_heads:
            raise ConfigError(
                f"AutoIntConfig.attention_dim={self.attention_dim} must be a multiple of "
                f"num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"AutoIntConfig.dropout must be in [0, 1), got {self.dropout}")


def _scale_autoint(config: AutoIntConfig, width: int, num_fields: int, dim: int) -> AutoIntConfig:
    # w is the width of one head: attention_dim = w · num_heads, so every width is valid
    # and the number of heads stays as configured. num_layers is the depth.
    return dataclasses.replace(config, attention_dim=width * config.num_heads)


@register_family(
    "autoint",
    AutoIntConfig,
    width="attention_dim",
    description="AutoInt: stacked multi-head self-attention over the field embeddings",
    scale=_scale_autoint,
    depth="num_layers",
    layer=AutoInt,
)
def build_autoint(config: AutoIntConfig, num_fields: int, dim: int) -> AutoInt:
    return AutoInt(num_fields, dim, **options(config))


# AutoInt+ = AutoInt's flattened output and a DNN on the flattened embedding, one logit:
# the parallel head (FuxiCTR sums fc(h) and DNN(x0); a Linear on [h ; MLP(x0)] is the same).
register_model(
    "autoint_plus",
    ModelConfig("autoint", AutoIntConfig(), head=HeadConfig(structure="parallel")),
    "AutoInt+ (3 self-attention layers, 2 heads of 32, residual) parallel with a 400x3 DNN",
)
register_model(
    "autoint_plus_frappe_bars",
    ModelConfig(
        "autoint",
        AutoIntConfig(
            num_layers=5,
            attention_dim=128,
            num_heads=4,
            use_residual=True,
            use_scale=True,
            layer_norm=True,
            dropout=0.1,
        ),
        embedding_dim=10,
        head=HeadConfig(structure="parallel", hidden=(400, 400, 400), dropout=0.1, batch_norm=True),
    ),
    "BARS AutoInt+_frappe_x1 settings (5 layers, 4 heads, attention 128, scaled, LN, DNN 400x3, BN, "
    "dropout 0.1, D=10)",
)
