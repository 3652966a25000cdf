"""Prepared splits read from disk block by block: training on data larger than memory.

A :class:`StreamedSplit` stands where an in-memory :class:`~mldcn.batch.Batch`
split does (``len``, ``num_tasks``, ``batches(...)``, ``rows(...)``), but keeps
no rows: each batch it yields is read from the raw arrays with positioned reads
(``os.preadv``) into ordinary memory. Reads rather than a memory map, because
pages of a mapping count towards the process's resident memory as they are
touched, and a shuffled gather over a mapping faults in a page per row; reads
leave caching to the OS page cache, which is not the process's memory.

Shuffling (``batches(shuffle=True)``), per epoch, with the caller's seeded generator:

1. the rows are cut into contiguous blocks of ``block_rows``, and the order of
   the blocks is permuted;
2. the permuted blocks are read ``buffer_rows // block_rows`` at a time into a
   buffer (the *shuffle buffer*), whose rows are permuted and cut into batches;
   the rows left over (fewer than a batch) go into the next buffer's first batch.

Every row is seen once per epoch. A row's neighbours in a batch come from the
buffer's blocks, drawn at random from the whole split, so when the buffer holds
the whole split this is a uniform shuffle; the smaller the buffer against the
split, the more rows of one block share batches. The next buffer is read in a
background thread while the current one is trained on, so memory is two buffers
(about ``2 × buffer_rows`` × the bytes of a row) whatever the size of the data.

Under ``torchrun``, rank ``r`` of ``W`` reads only its shard: the rows
``[r·S, (r+1)·S)`` with ``S = ceil(N / W)``, the last shard wrapping round to
the first rows, so every rank has ``S`` rows and the same number of batches (at
most ``W − 1`` rows are seen twice per epoch, as with PyTorch's
``DistributedSampler``). In-order batches (evaluation, prediction) follow
:meth:`Batch.batches`: rank ``r`` takes every ``W``-th row of each global batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mldcn.batch import Batch, in_order

BLOCK_ROWS = 16_384
BUFFER_ROWS = 1 << 20
AUTO_MEMORY_FRACTION = 0.25  # ``load: auto`` reads a split whole when all splits take at most this share of free memory
_COLUMNS = ("categorical", "numeric", "sequence", "labels", "weights")


class ArrayFile:
    """A raw little-endian array on disk of shape ``[N, *row]``, read by ranges of rows.

    Slicing (``array[a:b]``) reads those rows into a new numpy array.
    """

    def __init__(self, path: Path, dtype: str, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("an ArrayFile is read by contiguous row ranges (array[a:b])")
        start, stop, _ = key.indices(len(self))
        out = np.empty((max(stop - start, 0), *self.shape[1:]), dtype=self.dtype)
        self.read_into(out, start)
        return out

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Fill ``out`` (C-contiguous, ``[n, *row]``) with rows ``start .. start + n``."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        offset, done = start * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"{self.path}: ended at byte {offset + done}, expected {offset + len(view)}")
            done += got

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:  # a copy in another process opens the file afresh
        return {**self.__dict__, "_fd": None}


class StreamedSplit:
    """One split of a prepared directory, read from disk as it is used (see the module docstring)."""

    def __init__(
        self,
        arrays: dict[str, ArrayFile],
        block_rows: int = BLOCK_ROWS,
        buffer_rows: int = BUFFER_ROWS,
        tasks: list[int] | None = None,
    ) -> None:
        if block_rows < 1 or buffer_rows < 1:
            raise ValueError(f"block_rows and buffer_rows must be >= 1, got {block_rows} and {buffer_rows}")
        self.arrays = arrays  # column name -> its file (categorical, numeric, labels; sequence, weights if present)
        self.block_rows, self.buffer_rows = block_rows, buffer_rows
        self.tasks = tasks  # the label columns kept, in order (None: all)

    def __len__(self) -> int:
        return len(self.arrays["categorical"])

    @property
    def num_tasks(self) -> int:
        return len(self.tasks) if self.tasks is not None else self.arrays["labels"].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def select_labels(self, index: list[int]) -> "StreamedSplit":
        """The same rows with only the label columns ``index`` (in that order)."""
        tasks = [self.tasks[i] for i in index] if self.tasks is not None else list(index)
        return StreamedSplit(self.arrays, self.block_rows, self.buffer_rows, tasks)

    def label_means(self) -> np.ndarray:
        """The mean of each label column ``[T]`` (float64), read in blocks of the labels file only."""
        labels, total = self.arrays["labels"], np.zeros(self.arrays["labels"].shape[1])
        step = max(1, (64 << 20) // max(labels.row_bytes, 1))
        for start in range(0, len(labels), step):
            total += labels[start : start + step].sum(axis=0, dtype=np.float64)
        means = total / max(len(labels), 1)
        return means if self.tasks is None else means[self.tasks]

    # ---------------------------------------------------------------- reading rows

    def read(self, ranges: list[tuple[int, int]]) -> Batch:
        """The rows of ``ranges`` (``(start, stop)`` pairs, concatenated in order) as one batch."""
        total = sum(stop - start for start, stop in ranges)
        columns = {}
        for name, array in self.arrays.items():
            out = np.empty((total, *array.shape[1:]), dtype=array.dtype)
            at = 0
            for start, stop in ranges:
                array.read_into(out[at : at + stop - start], start)
                at += stop - start
            columns[name] = out
        if self.tasks is not None:
            columns["labels"] = np.ascontiguousarray(columns["labels"][:, self.tasks])
        return Batch(*(torch.from_numpy(columns[n]) if n in columns else None for n in _COLUMNS))

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` (clipped to the split), read from disk."""
        start, stop = max(0, start), min(stop, len(self))
        return self.read([(start, max(start, stop))])

    def _wrapped(self, start: int, count: int) -> list[tuple[int, int]]:
        """``count`` rows from ``start``, past the end continuing from row 0 (a padded shard)."""
        n, ranges = len(self), []
        while count > 0:
            begin = start % n
            stop = min(n, begin + count)
            ranges.append((begin, stop))
            count -= stop - begin
            start = stop
        return ranges

    # ---------------------------------------------------------------- batches

    def rows_per_epoch(self, world_size: int = 1) -> int:
        """Rows a shuffled epoch yields over all ranks: ``W · ceil(N / W)``."""
        return world_size * math.ceil(len(self) / world_size)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Rank ``rank``'s batches of ``batch_size`` rows: shuffled blocks of its shard, or in order."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if shuffle:
            yield from self._shuffled(batch_size, generator, drop_last, rank, world_size)
        else:
            yield from in_order(self, batch_size, drop_last, rank, world_size)

    def _shuffled(self, batch_size: int, generator, drop_last: bool, rank: int, world_size: int) -> Iterator[Batch]:
        if len(self) == 0:
            return
        shard = math.ceil(len(self) / world_size)
        first = rank * shard
        blocks = math.ceil(shard / self.block_rows)
        order = torch.randperm(blocks, generator=generator).tolist()  # the same draws on every rank
        per_buffer = max(1, self.buffer_rows // self.block_rows)
        buffers = []  # the row ranges of each buffer, in the order they are read
        for group in range(0, blocks, per_buffer):
            ranges = []
            for block in order[group : group + per_buffer]:
                begin = block * self.block_rows
                ranges += self._wrapped(first + begin, min(self.block_rows, shard - begin))
            buffers.append(ranges)
        carry: Batch | None = None
        with ThreadPoolExecutor(max_workers=1) as reader:  # reads the next buffer while this one is trained on
            pending = reader.submit(self.read, buffers[0])
            for index in range(len(buffers)):
                buffer = pending.result()
                if index + 1 < len(buffers):
                    pending = reader.submit(self.read, buffers[index + 1])
                permutation = torch.randperm(len(buffer), generator=generator)
                start = 0
                if carry is not None:  # the last buffer's left-over rows fill this buffer's first batch
                    start = min(batch_size - len(carry), len(buffer))
                    carry = _concat(carry, buffer.take(permutation[:start]))
                    if len(carry) < batch_size:
                        continue
                    yield carry
                whole = start + (len(buffer) - start) // batch_size * batch_size
                for begin in range(start, whole, batch_size):
                    yield buffer.take(permutation[begin : begin + batch_size])
                carry = buffer.take(permutation[whole:])
        if carry is not None and len(carry) and not drop_last:
            yield carry


def _concat(first: Batch, second: Batch) -> Batch:
    columns = [(getattr(first, n), getattr(second, n)) for n in _COLUMNS]
    return Batch(*(None if a is None else torch.cat([a, b]) for a, b in columns))


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; total memory where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fits_in_memory(nbytes: int) -> bool:
    """``load: auto``'s rule: read whole when the data takes at most a quarter of the available
    memory shared among this machine's processes of the run (``LOCAL_WORLD_SIZE``)."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return nbytes <= AUTO_MEMORY_FRACTION * available_memory() / max(processes, 1)
