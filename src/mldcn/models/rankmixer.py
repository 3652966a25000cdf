"""The RankMixer family (Zhu et al., ByteDance, arXiv 2507.15551): dense and sparse-MoE.

The layers need D to be a multiple of T (T heads of width D/T) and T <= F (a token
is a group of whole fields). So that a preset builds on any schema, the builders
use ``T = min(num_tokens, F)`` and round ``token_dim`` up to a multiple of that T;
the FFN width is ``round(ffn_ratio · D)``. Both are what the FLOPs are counted on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mldcn.config import Config
from mldcn.layers.rankmixer import RankMixer, SparseMoERankMixer, rankmixer_flops
from mldcn.models.budget import staged_width
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import register_family, register_model

#: The paper's FFN ratio k (D → kD → D); the top of the ratio range ``scale`` sweeps.
MAX_FFN_RATIO = 4


@dataclass(frozen=True)
class RankMixerConfig(Config):
    """RankMixer with dense per-token FFNs; see :class:`~mldcn.layers.rankmixer.RankMixer`."""

    num_layers: int = 2
    num_tokens: int = 8
    token_dim: int = 64
    ffn_ratio: float = 4.0

    _positive = ("num_layers", "num_tokens", "token_dim", "ffn_ratio")


@dataclass(frozen=True)
class SparseMoERankMixerConfig(Config):
    """RankMixer with per-token sparse MoE (ReLU routing); see
    :class:`~mldcn.layers.rankmixer.SparseMoERankMixer`. ``ffn_ratio`` is each expert's."""

    num_layers: int = 2
    num_tokens: int = 8
    token_dim: int = 64
    ffn_ratio: float = 1.0
    num_experts: int = 4

    _positive = ("num_layers", "num_tokens", "token_dim", "ffn_ratio", "num_experts")


RankMixerConfigs = RankMixerConfig | SparseMoERankMixerConfig


def effective_sizes(config: RankMixerConfigs, num_fields: int) -> tuple[int, int, int]:
    """``(T, D, D_h)`` the layer is built with: T <= F, D a multiple of T, D_h = round(ffn_ratio · D)."""
    tokens = min(config.num_tokens, num_fields)
    token_dim = -(-config.token_dim // tokens) * tokens
    return tokens, token_dim, max(1, round(config.ffn_ratio * token_dim))


def _num_experts(config: RankMixerConfigs) -> int | None:
    return getattr(config, "num_experts", None)


def _scale(config: RankMixerConfigs, width: int, num_fields: int, dim: int) -> RankMixerConfigs:
    # Stage m: D = m·T; the FFN width f (of each expert) runs up to MAX_FFN_RATIO·D within
    # a stage and starts each stage where the previous one's cost ended (staged_width), so
    # after stage 1 (f = 1 .. 4T) the ratio f/D stays in about [k·(m/(m+1))², k], k = 4.
    # T, L and E stay as configured; token_dim and ffn_ratio are set (the old ones unused).
    tokens = min(config.num_tokens, num_fields)
    experts = _num_experts(config)

    def cost(stage: int, hidden: int) -> int:
        token_dim = stage * tokens
        return rankmixer_flops(num_fields, dim, tokens, token_dim, hidden, config.num_layers, experts).total

    stage, hidden = staged_width(width, cost, lambda stage: MAX_FFN_RATIO * stage * tokens)
    token_dim = stage * tokens
    return dataclasses.replace(config, token_dim=token_dim, ffn_ratio=hidden / token_dim)


@register_family(
    "rankmixer",
    RankMixerConfig,
    width="token_dim",
    description="RankMixer: field tokens, parameter-free token mixing, per-token FFN",
    scale=_scale,
    depth="num_layers",
)
def build_rankmixer(config: RankMixerConfig, num_fields: int, dim: int) -> RankMixer:
    tokens, token_dim, hidden = effective_sizes(config, num_fields)
    return RankMixer(num_fields, dim, tokens, token_dim, hidden, config.num_layers)


@register_family(
    "rankmixer_moe",
    SparseMoERankMixerConfig,
    width="token_dim",
    description="RankMixer with per-token sparse MoE (ReLU routing)",
    scale=_scale,
    depth="num_layers",
)
def build_rankmixer_moe(config: SparseMoERankMixerConfig, num_fields: int, dim: int) -> SparseMoERankMixer:
    tokens, token_dim, hidden = effective_sizes(config, num_fields)
    return SparseMoERankMixer(
        num_fields, dim, tokens, token_dim, hidden, config.num_layers, config.num_experts
    )


# RankMixer pools its last tokens into the task towers (an MLP per task): the stacked head.
register_model(
    "rankmixer",
    ModelConfig("rankmixer", RankMixerConfig(), head=HeadConfig(structure="stacked")),
    "RankMixer (T=8 tokens, D=64, k=4, 2 blocks) under a 400x3 DNN",
)
register_model(
    "rankmixer_moe",
    ModelConfig("rankmixer_moe", SparseMoERankMixerConfig(), head=HeadConfig(structure="stacked")),
    "RankMixer sparse MoE (T=8, D=64, 4 ReLU-routed experts of ratio 1 per token) under a 400x3 DNN",
)
