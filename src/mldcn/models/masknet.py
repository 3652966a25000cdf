"""MaskNet families (Wang et al., arXiv 2102.07619): serial and parallel."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mldcn.config import Config, ConfigError
from mldcn.layers.mask import ParallelMaskNet, SerialMaskNet
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class SerialMaskNetConfig(Config):
    """Serial MaskNet: MaskBlock on the embedding, then MaskBlocks on MaskBlocks."""

    block_dims: tuple[int, ...] = (64, 64, 64)
    reduction_ratio: float = 1.0
    layer_norm: bool = True
    emb_layer_norm: bool = False
    dropout: float = 0.0

    _positive = ("block_dims", "reduction_ratio")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.block_dims:
            raise ConfigError("SerialMaskNetConfig.block_dims needs at least one block")


@dataclass(frozen=True)
class ParallelMaskNetConfig(Config):
    """Parallel MaskNet: ``num_blocks`` MaskBlocks on the embedding, concatenated."""

    num_blocks: int = 3
    block_dim: int = 64
    reduction_ratio: float = 1.0
    layer_norm: bool = True
    emb_layer_norm: bool = False
    dropout: float = 0.0

    _positive = ("num_blocks", "block_dim", "reduction_ratio")


def _scale_serial(config: SerialMaskNetConfig, width: int, num_fields: int, dim: int) -> SerialMaskNetConfig:
    # Every block `width` wide; the first block's mask hidden width is `width` too
    # (reduction_ratio is relative to a block's input width, d for the first block).
    return dataclasses.replace(
        config, block_dims=(width,) * len(config.block_dims), reduction_ratio=width / (num_fields * dim)
    )


def _scale_parallel(config: ParallelMaskNetConfig, width: int, num_fields: int, dim: int) -> ParallelMaskNetConfig:
    # Blocks `width` wide, each with a mask of hidden width `width`.
    return dataclasses.replace(config, block_dim=width, reduction_ratio=width / (num_fields * dim))


@register_family(
    "masknet_serial",
    SerialMaskNetConfig,
    width="block_dims",
    description="MaskNet, serial MaskBlocks",
    scale=_scale_serial,
    depth="block_dims",
    layer=SerialMaskNet,
)
def build_serial(config: SerialMaskNetConfig, num_fields: int, dim: int) -> SerialMaskNet:
    return SerialMaskNet(num_fields, dim, **options(config))


@register_family(
    "masknet_parallel",
    ParallelMaskNetConfig,
    width="block_dim",
    description="MaskNet, parallel MaskBlocks",
    scale=_scale_parallel,
    depth="num_blocks",
    layer=ParallelMaskNet,
)
def build_parallel(config: ParallelMaskNetConfig, num_fields: int, dim: int) -> ParallelMaskNet:
    return ParallelMaskNet(num_fields, dim, **options(config))


register_model(
    "masknet_serial",
    ModelConfig("masknet_serial", SerialMaskNetConfig(), head=HeadConfig(structure="stacked", hidden=())),
    "Serial MaskNet (3 blocks of 64) with a linear read-out",
)
register_model(
    "masknet_parallel",
    ModelConfig("masknet_parallel", ParallelMaskNetConfig(), head=HeadConfig(structure="stacked")),
    "Parallel MaskNet (3 blocks of 64) under a 400x3 DNN",
)
register_model(
    "masknet_frappe_bars",
    ModelConfig(
        "masknet_parallel",
        ParallelMaskNetConfig(num_blocks=3, block_dim=50, reduction_ratio=2.0, dropout=0.1),
        embedding_dim=10,
        head=HeadConfig(structure="stacked", hidden=(400, 400, 400), dropout=0.1),
    ),
    "BARS MaskNet_frappe_x1 settings (parallel, 3 blocks of 50, ratio 2, DNN 400x3, dropout 0.1, D=10)",
)
