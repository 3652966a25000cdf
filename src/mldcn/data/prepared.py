"""Loading a prepared data directory (``mldcn prepare``) as tensors.

The arrays are read whole into memory by default, which is fastest for
shuffled batches when they fit; ``mmap=True`` memory-maps them instead, so a
data set larger than memory can be trained on (the OS pages rows in as batches
gather them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mldcn.batch import Batch
from mldcn.data.dataset import Dataset, positive_rates
from mldcn.data.encode import FeatureMapError, read_feature_map
from mldcn.data.prepare import SPLITS
from mldcn.features import FeatureSpec


def _array(path: Path, dtype: str, shape: tuple[int, ...], mmap: bool) -> torch.Tensor:
    count = int(np.prod(shape))
    expected = count * np.dtype(dtype).itemsize
    if not path.exists():
        raise FeatureMapError(f"{path}: missing; prepare the data again")
    if path.stat().st_size != expected:
        raise FeatureMapError(
            f"{path}: {path.stat().st_size} bytes, expected {expected} for shape {shape}; prepare the data again"
        )
    if count == 0:
        return torch.from_numpy(np.zeros(shape, dtype=dtype))
    if mmap:
        array = np.memmap(path, dtype=dtype, mode="c", shape=shape)  # copy-on-write: writable view, shared pages
    else:
        array = np.fromfile(path, dtype=dtype, count=count).reshape(shape)
    return torch.from_numpy(array)


def load_split(directory: str | Path, split: str, mmap: bool = False) -> Batch:
    directory = Path(directory)
    feature_map = read_feature_map(directory)
    features = FeatureSpec.from_dict(feature_map["features"])
    rows = feature_map["rows"][split]
    base = directory / split
    sequence = None
    if features.sequence:
        shape = (rows, len(features.sequence), features.sequence_length)
        sequence = _array(base / "sequence.bin", "<i4", shape, mmap)
    return Batch(
        categorical=_array(base / "categorical.bin", "<i4", (rows, len(features.categorical)), mmap),
        numeric=_array(base / "numeric.bin", "<f4", (rows, len(features.numeric)), mmap),
        sequence=sequence,
        labels=_array(base / "labels.bin", "<f4", (rows, features.num_tasks), mmap),
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
