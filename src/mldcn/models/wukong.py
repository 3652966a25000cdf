"""The WuKong family (Zhang et al., Meta, arXiv 2403.02545): stacked FM and linear compression blocks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mldcn.config import Config, ConfigError
from mldcn.layers.wukong import WuKong, wukong_flops
from mldcn.models.budget import staged_width
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import register_family, register_model


@dataclass(frozen=True)
class WuKongConfig(Config):
    """WuKong's interaction stack; see :class:`~mldcn.layers.wukong.WuKong`.

    ``mlp_layers`` hidden layers of width ``mlp_dim`` in each FMB, then its linear
    output layer to n_F·D.
    """

    num_layers: int = 3
    num_fm_outputs: int = 8
    num_lcb_outputs: int = 8
    fm_rank: int = 8
    mlp_dim: int = 128
    mlp_layers: int = 1
    dropout: float = 0.0

    _positive = ("num_layers", "num_fm_outputs", "num_lcb_outputs", "fm_rank", "mlp_dim", "mlp_layers")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"WuKongConfig.dropout must be in [0, 1), got {self.dropout}")


# --------------------------------------------------------------------------- matched FLOPs


def _wukong_sizes(config: WuKongConfig, stage: int, mlp_dim: int) -> WuKongConfig:
    return dataclasses.replace(
        config, num_fm_outputs=stage, num_lcb_outputs=stage, fm_rank=stage, mlp_dim=mlp_dim
    )


def _scale_wukong(config: WuKongConfig, width: int, num_fields: int, dim: int) -> WuKongConfig:
    # Stage m: n_F = n_L = k = m (the paper widens them together, n_F = n_L); the FMB's
    # MLP width runs up to m·D (the FMB's output width n_F·D) within a stage.
    # num_layers and mlp_layers stay as configured.
    def cost(stage: int, mlp_dim: int) -> int:
        hidden = (mlp_dim,) * config.mlp_layers
        return wukong_flops(num_fields, dim, config.num_layers, stage, stage, stage, hidden).total

    stage, mlp_dim = staged_width(width, cost, lambda stage: stage * dim)
    return _wukong_sizes(config, stage, mlp_dim)


@register_family(
    "wukong",
    WuKongConfig,
    width="mlp_dim",
    description="WuKong: stacked FM (optimised X(X^T Y)) and linear compression blocks",
    scale=_scale_wukong,
    depth="num_layers",
)
def build_wukong(config: WuKongConfig, num_fields: int, dim: int) -> WuKong:
    return WuKong(
        num_fields,
        dim,
        num_layers=config.num_layers,
        num_fm_outputs=config.num_fm_outputs,
        num_lcb_outputs=config.num_lcb_outputs,
        rank=config.fm_rank,
        hidden=(config.mlp_dim,) * config.mlp_layers,
        dropout=config.dropout,
    )


# WuKong feeds the flattened output of its last layer to an MLP (the paper's "final MLP"):
# the stacked head, as for the MaskNet presets that follow their paper.
register_model(
    "wukong",
    ModelConfig("wukong", WuKongConfig(), head=HeadConfig(structure="stacked")),
    "WuKong (3 layers, n_F = n_L = k = 8, FMB MLP 128) under a 400x3 DNN",
)
