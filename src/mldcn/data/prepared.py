"""Loading a prepared data directory (``mldcn prepare``) as tensors.

The arrays are read whole into memory by default, which is fastest for
shuffled batches when they fit; ``mmap=True`` memory-maps them instead, so a
data set larger than memory can be trained on (the OS pages rows in as batches
gather them).

Loading checks that the arrays hold what ``feature_map.json`` says, so that a
damaged or mismatched directory is an error here rather than an ``IndexError``
deep in an embedding or a ``nan`` loss: every categorical and sequence id in
``[0, vocab_size)`` of its field, every label 0 or 1, every numeric value
finite. The check is one pass over blocks of rows (``CHECK_BLOCK_BYTES`` each,
so memory stays bounded for a memory-mapped split); ids are checked by their
per-field minimum and maximum, and a row is only located when one is out of range.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mldcn.batch import Batch
from mldcn.data.dataset import Dataset, positive_rates
from mldcn.data.encode import FeatureMapError, read_feature_map
from mldcn.data.prepare import SPLITS
from mldcn.features import FeatureSpec

CHECK_BLOCK_BYTES = 64 << 20
_AGAIN = "the arrays do not match feature_map.json; prepare the data again"


def _array(path: Path, dtype: str, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    count = int(np.prod(shape))
    expected = count * np.dtype(dtype).itemsize
    if not path.exists():
        raise FeatureMapError(f"{path}: missing; prepare the data again")
    if path.stat().st_size != expected:
        raise FeatureMapError(
            f"{path}: {path.stat().st_size} bytes, expected {expected} for shape {shape}; prepare the data again"
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="c", shape=shape)  # copy-on-write: writable view, shared pages
    return np.fromfile(path, dtype=dtype, count=count).reshape(shape)


def _blocks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of ``array`` in blocks of about ``CHECK_BLOCK_BYTES``."""
    row_bytes = max(1, array[:1].nbytes)
    step = max(1, CHECK_BLOCK_BYTES // row_bytes)
    for start in range(0, len(array), step):
        yield start, array[start : start + step]


def _check_ids(path: Path, ids: np.ndarray, names: list[str], sizes: list[int]) -> None:
    """Every id of field ``j`` (``ids[:, j]``, shape ``[N, F]`` or ``[N, F, L]``) is in ``[0, sizes[j])``."""
    if ids.size == 0:
        return
    high = np.asarray(sizes, dtype=np.int64)
    axes = tuple(a for a in range(ids.ndim) if a != 1)  # every axis but the field's
    for start, block in _blocks(ids):
        if block.min(axis=axes).min() >= 0 and (block.max(axis=axes) < high).all():
            continue
        bounds = high.reshape(1, -1, *([1] * (ids.ndim - 2)))
        outside = ((block < 0) | (block >= bounds)).reshape(len(block), len(sizes), -1)  # [n, F, L or 1]
        row = int(np.flatnonzero(outside.any(axis=(1, 2)))[0])
        field = int(np.flatnonzero(outside[row].any(axis=1))[0])
        value = int(block.reshape(len(block), len(sizes), -1)[row, field][outside[row, field]][0])
        raise FeatureMapError(
            f"{path}: row {start + row}, field {names[field]!r}: id {value} is outside [0, {sizes[field]}); {_AGAIN}"
        )


def _check_numeric(path: Path, numeric: np.ndarray, names: list[str]) -> None:
    for start, block in _blocks(numeric):
        finite = np.isfinite(block)
        if finite.all():
            continue
        row, field = (int(i[0]) for i in np.nonzero(~finite))
        raise FeatureMapError(
            f"{path}: row {start + row}, field {names[field]!r}: {float(block[row, field])} is not a finite number; {_AGAIN}"
        )


def _check_weights(path: Path, weights: np.ndarray) -> None:
    """Every row weight is a finite number >= 0."""
    for start, block in _blocks(weights):
        ok = np.isfinite(block) & (block >= 0)
        if ok.all():
            continue
        row = int(np.flatnonzero(~ok)[0])
        raise FeatureMapError(f"{path}: row {start + row}: weight {float(block[row])} is not a number >= 0; {_AGAIN}")


def _check_labels(path: Path, labels: np.ndarray, tasks: tuple[str, ...]) -> None:
    """Every label ``[N, T]`` is 0 or 1."""
    for start, block in _blocks(labels):
        binary = (block == 0) | (block == 1)
        if binary.all():
            continue
        row, task = (int(i[0]) for i in np.nonzero(~binary))
        raise FeatureMapError(
            f"{path}: row {start + row}, task {tasks[task]!r}: label {float(block[row, task])} is not 0 or 1; {_AGAIN}"
        )


def load_split(directory: str | Path, split: str, mmap: bool = False) -> Batch:
    """One split of a prepared directory; its values are checked against the feature map."""
    directory = Path(directory)
    feature_map = read_feature_map(directory)
    features = FeatureSpec.from_dict(feature_map["features"])
    rows = feature_map["rows"][split]
    base = directory / split
    categorical = _array(base / "categorical.bin", "<i4", (rows, len(features.categorical)), mmap)
    numeric = _array(base / "numeric.bin", "<f4", (rows, len(features.numeric)), mmap)
    labels = _array(base / "labels.bin", "<f4", (rows, features.num_tasks), mmap)
    sequence = None
    if features.sequence:
        shape = (rows, len(features.sequence), features.sequence_length)
        sequence = _array(base / "sequence.bin", "<i4", shape, mmap)
    fields = features.categorical
    _check_ids(base / "categorical.bin", categorical, [f.name for f in fields], [f.vocab_size for f in fields])
    if sequence is not None:
        fields = features.sequence
        _check_ids(base / "sequence.bin", sequence, [f.name for f in fields], [f.vocab_size for f in fields])
    _check_numeric(base / "numeric.bin", numeric, [f.name for f in features.numeric])
    _check_labels(base / "labels.bin", labels, features.task_names)
    weights = None
    if feature_map["schema"].get("weight"):  # the schema's per-row loss weights
        weights = _array(base / "weights.bin", "<f4", (rows,), mmap)
        _check_weights(base / "weights.bin", weights)
    return Batch(
        categorical=torch.from_numpy(categorical),
        numeric=torch.from_numpy(numeric),
        sequence=None if sequence is None else torch.from_numpy(sequence),
        labels=torch.from_numpy(labels),
        weights=None if weights is None else torch.from_numpy(weights),
    )


def load_prepared(directory: str | Path, mmap: bool = False) -> Dataset:
    """The train / valid / test splits of a prepared directory, with its feature spec."""
    directory = Path(directory)
    feature_map = read_feature_map(directory)
    features = FeatureSpec.from_dict(feature_map["features"])
    splits = {name: load_split(directory, name, mmap) for name in SPLITS}
    info = {
        "source": str(directory),
        "schema": feature_map["schema"]["name"],
        **{f"{name}_rows": feature_map["rows"][name] for name in SPLITS},
        "positive_rate": positive_rates(splits, features),
    }
    return Dataset(features, splits["train"], splits["valid"], splits["test"], info)
