"""The DeepFM family (Guo et al., IJCAI 2017, arXiv 1703.04247): FM beside a DNN.

DeepFM = FM (first- and second-order terms) + DNN, both on the same field
embeddings, summed into one logit. Here the FM is the interaction module
(:class:`~mldcn.layers.fm.FactorizationMachine`, ``[B, F, D] → [B, 2]``) and the DNN is
the shared head in its parallel structure, ``logit = W [first ; second ; MLP(x0)] + b``:
the head weighs the two FM terms with learned scalars where the paper adds them with
weight 1, and the first-order term reads the embeddings instead of a per-value
weight table (see :mod:`mldcn.layers.fm`).

The FM has no width: its cost (about 5·F·D FLOPs) is fixed by F and D, so the family
has none for :func:`~mldcn.models.budget.match_budget`, like the plain DNN; a
matched-FLOPs comparison includes DeepFM at its natural cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from mldcn.config import Config
from mldcn.layers.fm import FactorizationMachine
from mldcn.models.config import HeadConfig, ModelConfig
from mldcn.models.registry import options, register_family, register_model


@dataclass(frozen=True)
class DeepFMConfig(Config):
    """DeepFM's FM component; it has no hyper-parameters (the DNN is the head)."""


@register_family(
    "deepfm",
    DeepFMConfig,
    width=None,
    description="DeepFM: FM first- and second-order terms beside the DNN (no width: fixed cost)",
    layer=FactorizationMachine,
)
def build_deepfm(config: DeepFMConfig, num_fields: int, dim: int) -> FactorizationMachine:
    return FactorizationMachine(num_fields, dim, **options(config))


# The paper's DNN runs beside the FM on the same embeddings: the parallel head.
register_model(
    "deepfm",
    ModelConfig("deepfm", DeepFMConfig(), head=HeadConfig(structure="parallel")),
    "DeepFM: FM terms in parallel with a 400x3 DNN",
)
register_model(
    "deepfm_frappe_bars",
    ModelConfig(
        "deepfm",
        DeepFMConfig(),
        embedding_dim=10,
        head=HeadConfig(structure="parallel", hidden=(400, 400, 400), dropout=0.2, batch_norm=True),
    ),
    "BARS DeepFM_frappe_x1 settings (FM + DNN 400x3, BN, dropout 0.2, D=10)",
)
