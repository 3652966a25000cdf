"""The GDCN family (Wang et al., CIKM 2023, arXiv 2311.04635): DCNv2's cross network with an information gate.

GDCN-P (the gated cross network in parallel with a DNN on x0, ``[c_L ; DNN(x0)] → logit``)
and GDCN-S (the DNN stacked on the cross network, ``DNN(c_L) → logit``) are the shared
parallel and stacked heads (:mod:`mldcn.layers.head`), as in the paper's code and FuxiCTR.

Width knob: ``num_layers``, as DCNv2's full-rank family. Each layer costs 4d², so a
budget lands within ±3% only near a whole number of layers; the paper defines no
low-rank gated layer and none is invented here (the low-rank families are the ones for
fine-grained matched-FLOPs sweeps).
"""

from __future__ import annotations

from dataclasses import dataclass

from mldcn.config import Config
from mldcn.layers.gdcn import GatedCrossNet
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.dcnv2 import FRAPPE_BARS_HEAD
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class GatedCrossConfig(Config):
    """GDCN's gated cross network; see :class:`~mldcn.layers.gdcn.GatedCrossNet`."""

    num_layers: int = 3

    _positive = ("num_layers",)


@register_family(
    "gdcn", GatedCrossConfig, width="num_layers", description="GDCN gated full-rank cross", layer=GatedCrossNet
)
def build_gated_cross(config: GatedCrossConfig, num_fields: int, dim: int) -> GatedCrossNet:
    return GatedCrossNet(num_fields * dim, **options(config))


register_model(
    "gdcn",
    ModelConfig("gdcn", GatedCrossConfig()),
    "GDCN-P: 3 gated cross layers in parallel with a 400x3 DNN",
)
register_model(
    "gdcn_stacked",
    ModelConfig("gdcn", GatedCrossConfig(), head=HeadConfig(structure="stacked")),
    "GDCN-S: 3 gated cross layers stacked under a 400x3 DNN",
)
# BARS publishes no GDCN run on Frappe_x1: this is BARS's DCNv2_frappe_x1 recipe
# (dcnv2_frappe_bars: 4 layers, parallel DNN 400x3 with BN and dropout 0.4, D = 10) with
# the gated layer in place of DCNv2's, so the two compare like for like. The paper's own
# code defaults (D = 16, 3 layers, DNN 400x3 with BN and dropout 0.5, Adam 1e-3 with
# weight decay 1e-6, batch 4096) were tuned on its own random 8:1:1 Frappe split.
register_model(
    "gdcn_frappe_bars",
    ModelConfig(
        "gdcn",
        GatedCrossConfig(num_layers=4),
        embedding_dim=10,
        head=FRAPPE_BARS_HEAD,
    ),
    "GDCN-P with BARS's DCNv2_frappe_x1 settings (4 gated layers, DNN 400x3, BN, dropout 0.4, D=10)",
)
