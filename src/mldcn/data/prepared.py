"""Loading a prepared data directory (``mldcn prepare``) as tensors.

A split is read whole into memory (``load="memory"``: a :class:`~mldcn.batch.Batch`)
or left on disk and read block by block as it is used (``load="stream"``: a
:class:`~mldcn.data.stream.StreamedSplit`, for data larger than memory);
``load="auto"`` (the default) reads whole when all the splits take at most a
quarter of the available memory (:func:`~mldcn.data.stream.fits_in_memory`).

Loading checks that the arrays hold what ``feature_map.json`` says, so that a
damaged or mismatched directory is an error here rather than an ``IndexError``
deep in an embedding or a ``nan`` loss: every categorical and sequence id in
``[0, vocab_size)`` of its field, every label 0 or 1, every numeric value
finite. The check is one pass over blocks of rows (``CHECK_BLOCK_BYTES`` each,
read from disk, so memory stays bounded for a streamed split); ids are checked by their
per-field minimum and maximum, and a row is only located when one is out of range.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mldcn.batch import Batch
from mldcn.data.dataset import Dataset, positive_rates
from mldcn.data.encode import FeatureMapError, read_feature_map
from mldcn.data.prepare import SPLITS
from mldcn.data.stream import BLOCK_ROWS, BUFFER_ROWS, ArrayFile, StreamedSplit, fits_in_memory
from mldcn.features import FeatureSpec

Load = Literal["auto", "memory", "stream"]

CHECK_BLOCK_BYTES = 64 << 20
_AGAIN = "the arrays do not match feature_map.json; prepare the data again"


def _array(path: Path, dtype: str, shape: tuple[int, ...], stream: bool) -> np.ndarray | ArrayFile:
    count = int(np.prod(shape))
    expected = count * np.dtype(dtype).itemsize
    if not path.exists():
        raise FeatureMapError(f"{path}: missing; prepare the data again")
    if path.stat().st_size != expected:
        raise FeatureMapError(
            f"{path}: {path.stat().st_size} bytes, expected {expected} for shape {shape}; prepare the data again"
        )
    if stream:
        return ArrayFile(path, dtype, shape)
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    return np.fromfile(path, dtype=dtype, count=count).reshape(shape)


def _blocks(array: np.ndarray | ArrayFile) -> Iterator[tuple[int, np.ndarray]]:
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


def load_split(
    directory: str | Path,
    split: str,
    load: Load = "memory",
    block_rows: int = BLOCK_ROWS,
    buffer_rows: int = BUFFER_ROWS,
) -> Batch | StreamedSplit:
    """One split of a prepared directory, read whole (``memory``) or from disk as used
    (``stream``, with its shuffle's block and buffer rows); its values are checked against
    the feature map either way. ``auto`` decides by this split's size alone."""
    directory = Path(directory)
    feature_map = read_feature_map(directory)
    features = FeatureSpec.from_dict(feature_map["features"])
    rows = feature_map["rows"][split]
    base = directory / split
    if load == "auto":
        load = "memory" if fits_in_memory(_prepared_bytes(base)) else "stream"
    stream = load == "stream"
    arrays = {
        "categorical": _array(base / "categorical.bin", "<i4", (rows, len(features.categorical)), stream),
        "numeric": _array(base / "numeric.bin", "<f4", (rows, len(features.numeric)), stream),
        "labels": _array(base / "labels.bin", "<f4", (rows, features.num_tasks), stream),
    }
    if features.sequence:
        shape = (rows, len(features.sequence), features.sequence_length)
        arrays["sequence"] = _array(base / "sequence.bin", "<i4", shape, stream)
    if feature_map["schema"].get("weight"):  # the schema's per-row loss weights
        arrays["weights"] = _array(base / "weights.bin", "<f4", (rows,), stream)
    fields = features.categorical
    _check_ids(base / "categorical.bin", arrays["categorical"], [f.name for f in fields], [f.vocab_size for f in fields])
    if "sequence" in arrays:
        fields = features.sequence
        _check_ids(base / "sequence.bin", arrays["sequence"], [f.name for f in fields], [f.vocab_size for f in fields])
    _check_numeric(base / "numeric.bin", arrays["numeric"], [f.name for f in features.numeric])
    _check_labels(base / "labels.bin", arrays["labels"], features.task_names)
    if "weights" in arrays:
        _check_weights(base / "weights.bin", arrays["weights"])
    if stream:
        return StreamedSplit(arrays, block_rows, buffer_rows)
    return Batch(**{name: torch.from_numpy(array) for name, array in arrays.items()})


def _prepared_bytes(path: Path) -> int:
    """Bytes of the raw arrays under ``path`` (a split folder or a whole prepared directory)."""
    return sum(f.stat().st_size for f in path.rglob("*.bin"))


def load_prepared(
    directory: str | Path,
    load: Load = "auto",
    block_rows: int = BLOCK_ROWS,
    buffer_rows: int = BUFFER_ROWS,
) -> Dataset:
    """The train / valid / test splits of a prepared directory, with its feature spec.

    ``auto`` reads every split whole when all of them together fit (:func:`fits_in_memory`),
    else streams every split."""
    directory = Path(directory)
    feature_map = read_feature_map(directory)
    features = FeatureSpec.from_dict(feature_map["features"])
    if load == "auto":
        load = "memory" if fits_in_memory(sum(_prepared_bytes(directory / name) for name in SPLITS)) else "stream"
    splits = {name: load_split(directory, name, load, block_rows, buffer_rows) for name in SPLITS}
    info = {
        "source": str(directory),
        "schema": feature_map["schema"]["name"],
        "load": load,
        **{f"{name}_rows": feature_map["rows"][name] for name in SPLITS},
        "positive_rate": positive_rates(splits, features),
    }
    if "generator" in feature_map:  # a log written by a generator (`mldcn synth`): the best achievable AUC too
        info["generator"] = feature_map["generator"]["name"]
        info["ceiling"] = feature_map["generator"]["ceiling"]
    return Dataset(features, splits["train"], splits["valid"], splits["test"], info)
