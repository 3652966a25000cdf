"""In-memory (or memory-mapped) tensors of a data split, and batching over them.

A batch is a slice or a gather of whole columns: no per-row Python, no collation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from mldcn.features import FeatureSpec


@dataclass(frozen=True)
class TabularSplit:
    """Columns of one split, aligned by row.

    Attributes:
        categorical: int64 or int32 ``[N, Fc]`` per-field ids.
        numeric: float32 ``[N, Fn]``.
        label: float32 ``[N]`` in {0, 1}.
        sequence: int64 or int32 ``[N, Fs, L]`` (0 = padding) or None.
    """

    categorical: torch.Tensor
    numeric: torch.Tensor
    label: torch.Tensor
    sequence: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.label.shape[0]
        for name in ("categorical", "numeric", "sequence"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows, label has {n}")

    def __len__(self) -> int:
        return self.label.shape[0]

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The model's positional inputs ``(categorical, numeric, sequence)``."""
        return self.categorical, self.numeric, self.sequence

    def take(self, index: torch.Tensor) -> "TabularSplit":
        """Rows at ``index`` (a gather: one copy per column)."""
        return TabularSplit(
            self.categorical[index],
            self.numeric[index],
            self.label[index],
            None if self.sequence is None else self.sequence[index],
        )

    def rows(self, start: int, stop: int) -> "TabularSplit":
        """Rows ``start:stop`` (views, no copy)."""
        return TabularSplit(
            self.categorical[start:stop],
            self.numeric[start:stop],
            self.label[start:stop],
            None if self.sequence is None else self.sequence[start:stop],
        )

    def to(self, device: torch.device | str) -> "TabularSplit":
        return TabularSplit(
            self.categorical.to(device, non_blocking=True),
            self.numeric.to(device, non_blocking=True),
            self.label.to(device, non_blocking=True),
            None if self.sequence is None else self.sequence.to(device, non_blocking=True),
        )

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator["TabularSplit"]:
        """Batches in order (views) or in a seeded random order (gathers).

        With ``world_size > 1`` this yields rank ``rank``'s part of each global
        batch of ``batch_size * world_size`` rows: every rank walks the same
        permutation (same generator seed) and takes every ``world_size``-th row
        of the global batch, so the ranks see disjoint rows, together all rows,
        and the same number of batches.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        n = len(self)
        step = batch_size * world_size
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, step):
            if drop_last and start + step > n:
                return
            if order is not None:
                yield self.take(order[start : start + step][rank::world_size])
            elif world_size == 1:
                yield self.rows(start, start + batch_size)
            else:
                yield self.take(torch.arange(start + rank, min(start + step, n), world_size))


@dataclass(frozen=True)
class Dataset:
    """A feature spec and its train / valid / test splits, plus facts about them."""

    features: FeatureSpec
    train: TabularSplit
    valid: TabularSplit
    test: TabularSplit
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What the data is called in titles: its schema (prepared data) or ``synthetic``."""
        return self.info.get("schema") or self.info.get("source") or "data"
