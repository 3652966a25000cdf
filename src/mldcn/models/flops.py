"""FLOPs and parameter accounting for a RankingModel (convention: :mod:`mldcn.layers.flops`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mldcn.layers.flops import Flops
from mldcn.models.ranking import RankingModel


@dataclass(frozen=True)
class ModelCost:
    """Per-example forward cost and size of a model.

    Attributes:
        interaction: FLOPs of the interaction module (what matched-FLOPs comparisons match).
        head: FLOPs of the head (DNN tower and output layer).
        embedding: FLOPs of the embedding (numeric projection, pooling; lookups are 0).
        dense_params: parameters outside the lookup tables.
        embedding_params: parameters of the lookup tables.
        embedding_bytes_read: bytes of embedding rows read per example (fp32).
    """

    interaction: Flops
    head: Flops
    embedding: Flops
    dense_params: int
    embedding_params: int
    embedding_bytes_read: int

    @property
    def total(self) -> Flops:
        """All dense FLOPs of a forward pass."""
        return self.interaction + self.head + self.embedding

    def to_dict(self) -> dict[str, int]:
        """The figures reports and artifacts record."""
        return {
            "interaction_flops": self.interaction.total,
            "total_flops": self.total.total,
            "matmul_flops": self.total.matmul,
            "dense_params": self.dense_params,
            "embedding_params": self.embedding_params,
            "embedding_bytes_read": self.embedding_bytes_read,
        }


def model_cost(model: RankingModel) -> ModelCost:
    tables = {id(t) for t in model.embedding.tables()}
    embedding_params = sum(p.numel() for p in model.parameters() if id(p) in tables)
    dense_params = sum(p.numel() for p in model.parameters() if id(p) not in tables)
    return ModelCost(
        interaction=model.interaction.flops(),
        head=model.head.flops(),
        embedding=model.embedding.flops(),
        dense_params=dense_params,
        embedding_params=embedding_params,
        embedding_bytes_read=model.embedding.bytes_read(),
    )


def measured_matmul_flops(model: RankingModel, inputs: tuple[torch.Tensor, ...]) -> float:
    """Matmul FLOPs per example of ``model(*inputs)`` counted by ``FlopCounterMode``."""
    batch = inputs[0].shape[0]
    was_training = model.training
    model.eval()
    try:
        # Not under no_grad: FlopCounterMode's module tracker crashes (torch 2.13) on a module
        # output that is a view of a parameter made without grad (e.g. an identity StaticMask).
        # Only the forward runs, so the count is the same.
        with FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch
