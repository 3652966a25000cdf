"""The one form of model input, from the loader to the server: :class:`Batch`.

A batch is columns of rows aligned by row (shape legend in :mod:`mldcn.features`):

    categorical  int64 or int32  [B, Fc]     per-field ids
    numeric      float32         [B, Fn]     transformed numeric values
    sequence     int64 or int32  [B, Fs, L]  multi-valued ids, 0 = padding; or None
    labels       float32         [B, T]      one column per task, in {0, 1}; or None (rows to score)
    weights      float32         [B]         per-row loss weights; or None (all 1)

A whole split is a batch too: the loader's batches are slices (views) or
gathers of it, never per-row Python. Prepared arrays, the synthetic log, the
encoder's output for raw rows and a server request all become a ``Batch``; a
model takes ``batch.inputs()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    """Rows of model inputs, with their labels when they have them (see the module docstring)."""

    categorical: torch.Tensor
    numeric: torch.Tensor
    sequence: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.categorical.shape[0]
        for name in ("numeric", "sequence", "labels", "weights"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows, categorical has {n}")
        if self.labels is not None and self.labels.dim() != 2:
            raise ValueError(f"labels must be [B, T], got shape {tuple(self.labels.shape)}")
        if self.weights is not None and self.weights.dim() != 1:
            raise ValueError(f"weights must be [B], got shape {tuple(self.weights.shape)}")

    @classmethod
    def from_numpy(
        cls,
        categorical: np.ndarray,
        numeric: np.ndarray,
        sequence: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> "Batch":
        """A batch over numpy arrays (no copy where the dtypes allow it)."""

        def tensor(array):
            return None if array is None else torch.from_numpy(np.ascontiguousarray(array))

        return cls(tensor(categorical), tensor(numeric), tensor(sequence), tensor(labels), tensor(weights))

    def __len__(self) -> int:
        return self.categorical.shape[0]

    @property
    def num_tasks(self) -> int:
        return 0 if self.labels is None else self.labels.shape[1]

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The model's positional inputs ``(categorical, numeric, sequence)``."""
        return self.categorical, self.numeric, self.sequence

    def _map(self, f) -> "Batch":
        return Batch(*(None if v is None else f(v) for v in (self.categorical, self.numeric, self.sequence, self.labels, self.weights)))

    def take(self, index: torch.Tensor) -> "Batch":
        """Rows at ``index`` (a gather: one copy per column)."""
        return self._map(lambda v: v[index])

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` (views, no copy)."""
        return self._map(lambda v: v[start:stop])

    def to(self, device: torch.device | str) -> "Batch":
        return self._map(lambda v: v.to(device, non_blocking=True))

    def select_labels(self, index: list[int]) -> "Batch":
        """The same rows with only the label columns ``index`` (in that order)."""
        return Batch(self.categorical, self.numeric, self.sequence, self.labels[:, index], self.weights)

    def label_means(self) -> np.ndarray:
        """The mean of each label column ``[T]`` (float64)."""
        return self.labels.double().mean(dim=0).numpy()

    def rows_per_epoch(self, world_size: int = 1) -> int:
        """Rows a shuffled epoch yields over all ranks: every row once."""
        return len(self)

    def without_labels(self) -> "Batch":
        return Batch(self.categorical, self.numeric, self.sequence)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator["Batch"]:
        """Batches in order (views) or in a seeded random order (gathers).

        With ``world_size > 1`` this yields rank ``rank``'s part of each global
        batch of ``batch_size * world_size`` rows: every rank walks the same
        permutation (same generator seed) and takes every ``world_size``-th row
        of the global batch, so the ranks see disjoint rows, together all rows,
        and the same number of batches.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if not shuffle:
            yield from in_order(self, batch_size, drop_last, rank, world_size)
            return
        n = len(self)
        step = batch_size * world_size
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, step):
            if drop_last and start + step > n:
                return
            yield self.take(order[start : start + step][rank::world_size])


def in_order(split, batch_size: int, drop_last: bool = False, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """Rank ``rank``'s in-order batches of any split with ``len`` and ``rows(start, stop)`` (an
    in-memory :class:`Batch` or a streamed split): every ``world_size``-th row of each global
    batch of ``batch_size * world_size`` rows (views when ``world_size`` is 1)."""
    n, step = len(split), batch_size * world_size
    for start in range(0, n, step):
        if drop_last and start + step > n:
            return
        rows = split.rows(start, start + step)
        yield rows if world_size == 1 else rows.take(torch.arange(rank, len(rows), world_size))
