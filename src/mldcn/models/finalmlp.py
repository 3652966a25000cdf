"""The FinalMLP family (Mao et al., AAAI 2023, arXiv 2304.00902): two gated MLP streams, bilinear fusion.

FinalMLP has no DNN beside its interaction: the two streams *are* its DNN, so they
live in the interaction (:class:`~mldcn.layers.finalmlp.FinalMLP`), which returns the
fusion's k head values, and the presets' head is stacked with no hidden layer, a
linear read-out ``Σ_j a_j BF_j + b``: FinalMLP's own logit with a learned weight per
head (FinalMLP: 1). Under another head (a matched-FLOPs comparison's shared head) the
k values are the interaction's output like any family's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from mldcn.config import Config, ConfigError
from mldcn.layers.finalmlp import FinalMLP
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class FinalMLPConfig(Config):
    """FinalMLP's interaction; see :class:`~mldcn.layers.finalmlp.FinalMLP` (the same
    names as FuxiCTR's, ``mlp1_hidden_units`` → ``mlp1_hidden``, ``fs_hidden_units`` →
    ``gate_hidden``, ``fs1_context`` → ``gate1_context`` as field indices, ``use_fs`` →
    ``feature_gating``)."""

    mlp1_hidden: tuple[int, ...] = (400,)
    mlp2_hidden: tuple[int, ...] = (100,)
    mlp1_dropout: float = 0.0
    mlp2_dropout: float = 0.0
    mlp1_batch_norm: bool = False
    mlp2_batch_norm: bool = False
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    feature_gating: bool = True
    gate_hidden: tuple[int, ...] = (400,)
    gate1_context: tuple[int, ...] = ()
    gate2_context: tuple[int, ...] = ()
    num_heads: int = 2

    _positive = ("mlp1_hidden", "mlp2_hidden", "gate_hidden", "num_heads")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        for field in ("mlp1_hidden", "mlp2_hidden"):
            widths = getattr(self, field)
            if not widths:
                raise ConfigError(f"{name}.{field} needs at least one layer")
            if widths[-1] % self.num_heads:
                raise ConfigError(
                    f"{name}.{field}: the last width ({widths[-1]}) must be a multiple of "
                    f"num_heads ({self.num_heads})"
                )
        for field in ("mlp1_dropout", "mlp2_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ConfigError(f"{name}.{field} must be in [0, 1), got {getattr(self, field)}")
        for field in ("gate1_context", "gate2_context"):
            fields = getattr(self, field)
            if any(f < 0 for f in fields) or len(set(fields)) != len(fields):
                raise ConfigError(f"{name}.{field} must list distinct field indices >= 0, got {list(fields)}")


# --------------------------------------------------------------------------- matched FLOPs


def _scale_finalmlp(config: FinalMLPConfig, width: int, num_fields: int, dim: int) -> FinalMLPConfig:
    # Stream 1's first layer becomes `width`; every other width of the streams and the gates
    # keeps its ratio to it in `config` (BARS Frappe: streams 400 and 100, gates 400), rounded,
    # at least 1, and each stream's last width to a multiple of num_heads (at least num_heads).
    # Cost is non-decreasing in `width` (floor rounding is monotone). The number of layers and
    # heads, the contexts, dropout and batch norm stay as configured.
    reference, heads = config.mlp1_hidden[0], config.num_heads

    def resize(widths: tuple[int, ...], multiple: int) -> tuple[int, ...]:
        sized = [max(1, (2 * width * w + reference) // (2 * reference)) for w in widths]  # round(width·w/ref)
        last = widths[-1]
        sized[-1] = multiple * max(1, (2 * width * last + reference * multiple) // (2 * reference * multiple))
        return tuple(sized)

    return dataclasses.replace(
        config,
        mlp1_hidden=resize(config.mlp1_hidden, heads),
        mlp2_hidden=resize(config.mlp2_hidden, heads),
        gate_hidden=resize(config.gate_hidden, 1) if config.gate_hidden else (),
    )


@register_family(
    "finalmlp",
    FinalMLPConfig,
    width="mlp1_hidden",
    description="FinalMLP: two feature-gated MLP streams with multi-head bilinear fusion",
    scale=_scale_finalmlp,
    layer=FinalMLP,
)
def build_finalmlp(config: FinalMLPConfig, num_fields: int, dim: int) -> FinalMLP:
    return FinalMLP(num_fields, dim, **options(config))


# The interaction ends in FinalMLP's fusion: a linear read-out of its k heads is the logit.
_READOUT = HeadConfig(structure="stacked", hidden=())

register_model(
    "finalmlp",
    ModelConfig("finalmlp", FinalMLPConfig(), head=_READOUT),
    "FinalMLP: streams 400 and 100, global feature gates (hidden 400), 2-head bilinear fusion",
)
# reczoo/BARS ranking/ctr/FinalMLP/FinalMLP_frappe_x1 (FinalMLP_frappe_x1_004_e1ab402f, FuxiCTR 2.0.1):
# fs1_context [user], fs2_context [item] = fields 0 and 1 of the frappe schema.
register_model(
    "finalmlp_frappe_bars",
    ModelConfig(
        "finalmlp",
        FinalMLPConfig(
            mlp1_hidden=(400,),
            mlp2_hidden=(100,),
            mlp1_dropout=0.4,
            mlp2_dropout=0.4,
            mlp1_batch_norm=True,
            mlp2_batch_norm=True,
            gate_hidden=(400,),
            gate1_context=(0,),
            gate2_context=(1,),
            num_heads=5,
        ),
        embedding_dim=10,
        head=_READOUT,
    ),
    "BARS FinalMLP_frappe_x1 settings (streams 400/100, BN, dropout 0.4, user/item gates, 5 heads, D=10)",
)
