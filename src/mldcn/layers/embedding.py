"""Feature embedding: categorical, numeric and multi-valued fields into ``[B, F, D]``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mldcn.features import FeatureSpec
from mldcn.layers.flops import ELEMENTWISE, Flops


class FeatureEmbedding(nn.Module):
    """One fused table for all categorical fields, per-field vectors for numeric fields.

    For field ``f`` of an example:

        categorical:  e_f = E[offset_f + id_f]                      # [D]
        numeric:      e_f = value_f * w_f                           # [D]
        multi-valued: e_f = mean_{j: id_j != 0} E_s[offset_f + id_j]  # [D], 0 if empty

    The output is the stacked field embeddings ``[B, F, D]`` in the order of the
    :class:`~mldcn.features.FeatureSpec` (categorical, numeric, sequence); flatten
    it to ``x0 [B, d]`` with ``d = F * D``.

    One fused table with per-field offsets does one lookup for all fields (as
    TorchRec's ``EmbeddingBagCollection`` fuses tables) instead of ``Fc`` small ones.
    Tables start at N(0, 1e-4^2), FuxiCTR's default.

    Args:
        features: the fields to embed.
        dim: embedding size D.
        init_std: standard deviation of the initial table entries.

    Shape:
        categorical ``[B, Fc]`` int64, numeric ``[B, Fn]`` float, sequence
        ``[B, Fs, L]`` int64 or None → ``[B, F, D]``.

    Example:
        >>> from mldcn.features import FeatureSpec, CategoricalField, NumericField
        >>> spec = FeatureSpec(categorical=(CategoricalField("user", 10),),
        ...                    numeric=(NumericField("price"),))
        >>> emb = FeatureEmbedding(spec, dim=4)
        >>> emb(torch.tensor([[3]]), torch.tensor([[0.5]])).shape
        torch.Size([1, 2, 4])
    """

    def __init__(self, features: FeatureSpec, dim: int, init_std: float = 1e-4) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.features = features
        self.dim = dim
        self.init_std = init_std
        self.num_fields = features.num_fields
        self.sparse = False  # set by the trainer when a sparse optimiser owns the tables

        cat_sizes = [f.vocab_size for f in features.categorical]
        self.register_buffer("categorical_offsets", _offsets(cat_sizes), persistent=False)
        self.categorical_table = nn.Parameter(torch.empty(sum(cat_sizes), dim)) if cat_sizes else None

        self.numeric_weight = (
            nn.Parameter(torch.empty(len(features.numeric), dim)) if features.numeric else None
        )

        seq_sizes = [f.vocab_size for f in features.sequence]
        self.register_buffer("sequence_offsets", _offsets(seq_sizes), persistent=False)
        self.sequence_table = nn.Parameter(torch.empty(sum(seq_sizes), dim)) if seq_sizes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in (self.categorical_table, self.sequence_table):
            if table is not None:
                nn.init.normal_(table, std=self.init_std)
        if self.numeric_weight is not None:
            nn.init.normal_(self.numeric_weight, std=self.init_std)

    @property
    def output_dim(self) -> int:
        """d = F * D, the width of the flattened embedding x0."""
        return self.num_fields * self.dim

    def tables(self) -> list[nn.Parameter]:
        """The lookup tables (what an embedding optimiser or regulariser acts on)."""
        return [t for t in (self.categorical_table, self.sequence_table) if t is not None]

    def forward(
        self,
        categorical: torch.Tensor,
        numeric: torch.Tensor,
        sequence: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = []
        if self.categorical_table is not None:
            ids = categorical + self.categorical_offsets  # [B, Fc]
            parts.append(F.embedding(ids, self.categorical_table, sparse=self.sparse))  # [B, Fc, D]
        if self.numeric_weight is not None:
            parts.append(numeric.unsqueeze(-1) * self.numeric_weight)  # [B, Fn, 1] * [Fn, D]
        if self.sequence_table is not None:
            if sequence is None:
                raise ValueError("this model has multi-valued fields: pass the `sequence` tensor")
            ids = sequence + self.sequence_offsets[:, None]  # [B, Fs, L]
            vectors = F.embedding(ids, self.sequence_table, sparse=self.sparse)  # [B, Fs, L, D]
            present = (sequence != 0).unsqueeze(-1).to(vectors.dtype)  # [B, Fs, L, 1]
            count = present.sum(dim=2).clamp_min(1.0)  # [B, Fs, 1]
            parts.append((vectors * present).sum(dim=2) / count)  # [B, Fs, D]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def flops(self) -> Flops:
        """Numeric fields: one multiply per element; pooling: mask, sum and divide."""
        seq_len = self.features.sequence_length
        num_seq = len(self.features.sequence)
        pooling = num_seq * self.dim * (2 * seq_len + 1) * ELEMENTWISE
        return Flops(elementwise=len(self.features.numeric) * self.dim * ELEMENTWISE + pooling)

    def bytes_read(self, dtype_bytes: int = 4) -> int:
        """Embedding bytes read per example (lookups are 0 FLOPs; this is their cost)."""
        rows = len(self.features.categorical) + sum(f.max_len for f in self.features.sequence)
        return rows * self.dim * dtype_bytes


def _offsets(sizes: list[int]) -> torch.Tensor:
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    return torch.tensor(offsets if sizes else [], dtype=torch.long)
