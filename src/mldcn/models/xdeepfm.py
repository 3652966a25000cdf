"""The xDeepFM family (Lian et al., KDD 2018, arXiv 1803.05170): linear + CIN + DNN.

The interaction module is :class:`~mldcn.layers.cin.XDeepFMInteraction`, the CIN's
sum-pooled feature maps and the linear term (``[B, Σ_k H_k + 1]``); the DNN is the
shared head in its parallel structure, whose output unit over ``[p+ ; linear ; MLP(x0)]``
is the paper's combined output unit. The width knob is the CIN layer size H: every
layer gets the same number of maps, resized together (2·w with split-half, so the
layers passing half their maps on stay even).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mldcn.config import Config, ConfigError
from mldcn.layers.cin import XDeepFMInteraction
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class XDeepFMConfig(Config):
    """xDeepFM's CIN (and linear term); see :class:`~mldcn.layers.cin.CompressedInteractionNet`.

    ``layer_sizes`` are the feature maps H_k of each CIN layer; ``split_half`` passes
    half of each layer's maps (all but the last) on and pools the other half, as the
    authors' released code does (FuxiCTR/BARS: off).
    """

    layer_sizes: tuple[int, ...] = (64, 64, 64)
    split_half: bool = False

    _positive = ("layer_sizes",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layer_sizes:
            raise ConfigError("XDeepFMConfig.layer_sizes needs at least one layer")
        if self.split_half and any(h % 2 for h in self.layer_sizes[:-1]):
            raise ConfigError(
                "XDeepFMConfig.layer_sizes must be even (all but the last) with split_half, "
                f"got {self.layer_sizes!r}"
            )


def _scale_xdeepfm(config: XDeepFMConfig, width: int, num_fields: int, dim: int) -> XDeepFMConfig:
    # Every layer w maps (2w with split-half: even, and the same maps per layer pass on).
    size = 2 * width if config.split_half else width
    return dataclasses.replace(config, layer_sizes=(size,) * len(config.layer_sizes))


@register_family(
    "xdeepfm",
    XDeepFMConfig,
    width="layer_sizes",
    description="xDeepFM: Compressed Interaction Network (sum-pooled maps) and linear term beside the DNN",
    scale=_scale_xdeepfm,
    depth="layer_sizes",
    layer=XDeepFMInteraction,
)
def build_xdeepfm(config: XDeepFMConfig, num_fields: int, dim: int) -> XDeepFMInteraction:
    return XDeepFMInteraction(num_fields, dim, **options(config))


# The paper's DNN runs beside the CIN and the linear term, one output unit over all three:
# the parallel head. Three layers as in the paper (which used 100-200 maps on 22-39 fields),
# 32 maps each for the synthetic log's 14 fields at D=16 (about 1.1M FLOPs, near RankMixer's default).
register_model(
    "xdeepfm",
    ModelConfig("xdeepfm", XDeepFMConfig(layer_sizes=(32, 32, 32)), head=HeadConfig(structure="parallel")),
    "xDeepFM: CIN (3 layers of 32 maps) and linear term in parallel with a 400x3 DNN",
)
register_model(
    "xdeepfm_frappe_bars",
    ModelConfig(
        "xdeepfm",
        XDeepFMConfig(layer_sizes=(64,)),
        embedding_dim=10,
        head=HeadConfig(structure="parallel", hidden=(400, 400, 400), dropout=0.2, batch_norm=True),
    ),
    "BARS xDeepFM_frappe_x1 settings (CIN 1 layer of 64, DNN 400x3, BN, dropout 0.2, D=10)",
)
