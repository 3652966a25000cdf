"""RankingModel: embedding → interaction → head. Returns logits."""

from __future__ import annotations

import torch
from torch import nn

from mldcn.layers.embedding import FeatureEmbedding


class RankingModel(nn.Module):
    """The one model shape: ``logits = head(interaction(E(x)), flatten(E(x)))``.

    Args:
        embedding: a :class:`~mldcn.layers.FeatureEmbedding` (``[B, F, D]``).
        interaction: any module ``[B, F, D] → [B, h]`` (or ``[B, T, h]``, one
            representation per task, for a mixture of experts) with ``out_dim`` and ``flops()``.
        head: :class:`~mldcn.layers.ParallelHead`, :class:`~mldcn.layers.StackedHead`
            or :class:`~mldcn.layers.multitask.TaskTowers`: ``→ [B, T]``.
        config: the :class:`~mldcn.models.config.ModelConfig` it was built from
            (kept for saving and reporting; not used by ``forward``).

    Shape:
        categorical ``[B, Fc]``, numeric ``[B, Fn]``, sequence ``[B, Fs, L]`` → logits ``[B, T]``,
        one column per task. Apply ``torch.sigmoid`` for probabilities; train with
        ``BCEWithLogitsLoss`` per task.
    """

    def __init__(self, embedding: FeatureEmbedding, interaction: nn.Module, head: nn.Module, config=None):
        super().__init__()
        self.embedding = embedding
        self.interaction = interaction
        self.head = head
        self.config = config

    def forward(
        self,
        categorical: torch.Tensor,
        numeric: torch.Tensor,
        sequence: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embedding(categorical, numeric, sequence)  # [B, F, D]
        h = self.interaction(emb)  # [B, h] or [B, T, h]
        return self.head(h, emb.flatten(1))  # [B, T]
