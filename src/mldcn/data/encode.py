"""Fitting and applying the preprocessing: raw columns → model input arrays.

:class:`Fitter` streams over the training rows once and collects vocabulary
counts, numeric statistics and bucket samples; :class:`Encoder` holds the fitted
result and turns raw columns into the arrays a model takes.

Fitters of disjoint parts of the rows :meth:`~Fitter.merge` into the fitter of
all of them, so parallel preparation fits each part in its own process. What
the fit gives is a function of the rows, not of how they were cut or in which
order the parts arrive: vocabularies are exact counts, ordered by count then
value; the bucket sample is the ``_BUCKET_SAMPLE`` rows with the smallest keys
(a hash of the row's position); numeric moments are merged in the order of the
parts, a fixed order that does not depend on the number of processes. Training
(``mldcn prepare``) and serving (``mldcn predict``/``serve``) use the same
``Encoder``, saved as ``feature_map.json`` plus one Parquet file per vocabulary.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mldcn.data.readers import as_float, as_string
from mldcn.data.schema import CategoricalColumn, DataSchema, NumericColumn, SequenceColumn, schema_from_dict
from mldcn.features import CategoricalField, FeatureSpec, NumericField, SequenceField, TaskSpec
from mldcn.files import write_text_atomic

if TYPE_CHECKING:  # torch is imported only by what returns tensors: preparation workers run without it
    from mldcn.batch import Batch

#: 2: labels.bin [N, T], one column per task (was label.bin [N])
FORMAT_VERSION = 2
_COMPACT_ROWS = 1 << 16  # merge partial vocabulary counts once they hold more rows than this and the merged part
_BUCKET_SAMPLE = 1_000_000


class FeatureMapError(ValueError):
    """A saved feature map is missing, corrupt or of another format version."""


# ---------------------------------------------------------------------------- derivations


def categorical_strings(column: CategoricalColumn, raw: pa.Array) -> pa.Array:
    """The string values of a (possibly derived) categorical column; missing → ``""``."""
    if column.derive == "none":
        return as_string(raw)
    if column.derive == "log_square_bucket":
        v = as_float(raw, column.fill)
        with np.errstate(divide="ignore", invalid="ignore"):
            bucket = np.where(v > 2, np.floor(np.log(np.where(v > 2, v, 1.0)) ** 2), np.trunc(v))
        return pa.array(bucket.astype(np.int64)).cast(pa.string())
    text = as_string(raw)
    if column.derive == "hour_of_day":  # Avazu YYMMDDHH
        return pc.utf8_slice_codeunits(text, 6, 8)
    day = pc.strptime(pc.utf8_slice_codeunits(text, 0, 6), format="%y%m%d", unit="s", error_is_null=True)
    weekday = pc.day_of_week(day)  # Monday = 0
    if column.derive == "weekday":
        return pc.fill_null(pc.cast(weekday, pa.string()), "")
    if column.derive == "weekend":
        return pc.fill_null(pc.cast(pc.greater_equal(weekday, 5), pa.string()), "")
    raise ValueError(f"derive {column.derive!r} does not produce strings")


def numeric_values(column: NumericColumn, raw: pa.Array) -> np.ndarray:
    """Filled and log-transformed (if asked) values, before standardisation."""
    v = as_float(raw, column.fill)
    if column.transform in ("log", "log_standardize"):
        v = np.sign(v) * np.log1p(np.abs(v))
    return v


def sequence_lists(column: SequenceColumn, raw: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """All non-empty values of a multi-valued column, flat, and the row each belongs to."""
    lists = pc.split_pattern(as_string(raw), column.separator)
    flat = pc.list_flatten(lists)
    parent = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    keep = np.asarray(pc.not_equal(flat, ""), dtype=bool)
    return pc.filter(flat, pa.array(keep)), parent[keep]


def stable_hash(values: pa.Array, buckets: int) -> np.ndarray:
    """``1 + crc32(value) mod buckets`` for each value (stable across runs and machines)."""
    unique = pc.unique(values)
    hashed = np.array([zlib.crc32(v.encode()) % buckets for v in unique.to_pylist()], dtype=np.int64) + 1
    return hashed[np.asarray(pc.index_in(values, value_set=unique), dtype=np.int64)]


# ---------------------------------------------------------------------------- fitting


class _Counter:
    """Streaming value counts of a string column, merged in Arrow.

    ``merged`` holds the counts merged so far; the partial counts in ``pending``
    are merged in once they hold more rows than it (and than ``_COMPACT_ROWS``):
    memory stays within a small multiple of the number of distinct values, and a
    count is re-merged O(log n) times, not once per chunk.
    """

    def __init__(self) -> None:
        self.merged: pa.Table | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def update(self, values: pa.Array) -> None:
        counts = pc.value_counts(values)
        self._add(pa.table({"value": counts.field("values"), "count": counts.field("counts")}))

    def merge(self, other: "_Counter") -> None:
        """Add the counts of ``other``."""
        for table in ([other.merged] if other.merged is not None else []) + other.pending:
            self._add(table)

    def _add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += len(table)
        if self.pending_rows > max(0 if self.merged is None else len(self.merged), _COMPACT_ROWS):
            self.merged, self.pending, self.pending_rows = self._merged(), [], 0

    def _merged(self) -> pa.Table:
        parts = ([self.merged] if self.merged is not None else []) + self.pending
        if not parts:
            return pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
        table = pa.concat_tables(parts)
        return table.group_by("value").aggregate([("count", "sum")]).rename_columns(["value", "count"])

    def vocabulary(self, min_count: int) -> pa.Array:
        """Values seen at least ``min_count`` times, most frequent first (ties by value)."""
        table = self._merged()
        table = table.filter(pc.greater_equal(table["count"], min_count))
        table = table.sort_by([("count", "descending"), ("value", "ascending")])
        return table["value"].combine_chunks()


@dataclass
class _Moments:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        n, mean = values.size, float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        delta = mean - self.mean
        total = self.n + n
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.n * n / total
        self.n = total

    def merge(self, other: "_Moments") -> None:
        """Chan et al.'s pairwise update: the moments of both parts' values."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return
        delta = other.mean - self.mean
        total = self.n + other.n
        self.mean += delta * other.n / total
        self.m2 += other.m2 + delta**2 * self.n * other.n / total
        self.n = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n > 0 else 0.0


class _Sample:
    """The values of the ``size`` rows with the smallest keys seen (a uniform sample when
    the keys are a hash of the rows' positions); a function of the rows, not of their order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.keys = np.zeros(0, dtype=np.uint64)
        self.values = np.zeros(0, dtype=np.float64)

    def update(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(self.keys) >= self.size:  # only keys below the largest kept one can enter
            below = keys < self.keys.max()
            keys, values = keys[below], values[below]
        if keys.size == 0:
            return
        self.keys = np.concatenate([self.keys, keys.astype(np.uint64)])
        self.values = np.concatenate([self.values, values.astype(np.float64)])
        if len(self.keys) > 2 * self.size:  # amortised: cut back to size when twice over
            self._cut()

    def merge(self, other: "_Sample") -> None:
        self.update(other.keys, other.values)

    def _cut(self) -> None:
        if len(self.keys) > self.size:
            keep = np.argpartition(self.keys, self.size - 1)[: self.size]  # keys are distinct: one answer
            self.keys, self.values = self.keys[keep], self.values[keep]

    def result(self) -> np.ndarray:
        self._cut()
        return self.values


class Fitter:
    """Streams over training rows and fits an :class:`Encoder`.

    Several fitters, each over its own rows, :meth:`merge` into one; the result
    is exact (vocabularies, bucket samples) or, for the numeric moments, fixed by
    the order of the merges.
    """

    def __init__(self, schema: DataSchema, seed: int = 0) -> None:
        self.schema = schema
        self.counters = {
            c.name: _Counter()
            for c in schema.categorical
            if c.hash_buckets is None and c.derive != "bucketize"
        }
        self.sequence_counters = {c.name: _Counter() for c in schema.sequence}
        self.moments = {c.name: _Moments() for c in schema.numeric}
        self.samples = {c.name: _Sample(_BUCKET_SAMPLE) for c in schema.categorical if c.derive == "bucketize"}
        self.seed = seed
        self.rows = 0

    def update(self, columns: dict[str, pa.Array], keys: np.ndarray | None = None) -> None:
        """Count the rows ``columns``. ``keys``: a distinct uint64 per row, a hash of its
        position in the input (the bucket sample keeps the rows with the smallest keys);
        default: a hash of the row's number in this fitter's stream."""
        n = len(next(iter(columns.values())))
        if keys is None and self.samples:
            keys = row_keys(np.arange(self.rows, self.rows + n, dtype=np.uint64), self.seed)
        self.rows += n
        for col in self.schema.categorical:
            raw = columns[col.column]
            if col.name in self.counters:
                self.counters[col.name].update(categorical_strings(col, raw))
            elif col.name in self.samples:
                self.samples[col.name].update(keys, as_float(raw, col.fill))
        for col in self.schema.numeric:
            self.moments[col.name].update(numeric_values(col, columns[col.column]))
        for col in self.schema.sequence:
            values, _ = sequence_lists(col, columns[col.column])
            self.sequence_counters[col.name].update(values)

    def merge(self, other: "Fitter") -> None:
        """Add what ``other`` (a fitter of the same schema, over other rows) counted."""
        for name, counter in {**other.counters, **other.sequence_counters}.items():
            (self.counters if name in self.counters else self.sequence_counters)[name].merge(counter)
        for name, moments in other.moments.items():
            self.moments[name].merge(moments)
        for name, sample in other.samples.items():
            self.samples[name].merge(sample)
        self.rows += other.rows

    def finish(self) -> "Encoder":
        if self.rows == 0:
            raise ValueError("cannot fit preprocessing on zero training rows")
        schema = self.schema
        vocabularies = {
            name: counter.vocabulary(schema.min_count_of(_column(schema, name)))
            for name, counter in {**self.counters, **self.sequence_counters}.items()
        }
        stats = {
            name: {"mean": m.mean, "std": m.std if m.std > 0 else 1.0} for name, m in self.moments.items()
        }
        boundaries = {}
        for col in schema.categorical:
            if col.derive == "bucketize":
                sample = self.samples[col.name].result()
                sample = sample if sample.size else np.zeros(1)
                qs = np.quantile(sample, np.linspace(0, 1, col.num_buckets + 1)[1:-1])
                boundaries[col.name] = np.unique(qs)
        return Encoder(schema, vocabularies, stats, boundaries, train_rows=self.rows)


def row_keys(positions: np.ndarray, seed: int) -> np.ndarray:
    """A distinct, uniform uint64 per position (splitmix64 of seed and position: a bijection)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64, as intended
        x = positions.astype(np.uint64) + np.uint64(seed % 2**64) * golden + golden
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _column(schema: DataSchema, name: str):
    return next(c for c in (*schema.categorical, *schema.sequence) if c.name == name)


# ---------------------------------------------------------------------------- encoding


@dataclass
class Encoder:
    """Fitted preprocessing: vocabularies, numeric statistics and bucket boundaries."""

    schema: DataSchema
    vocabularies: dict[str, pa.Array]
    numeric_stats: dict[str, dict]
    boundaries: dict[str, np.ndarray] = field(default_factory=dict)
    train_rows: int = 0

    def vocab_size(self, name: str) -> int:
        col = _column(self.schema, name)
        if isinstance(col, SequenceColumn):
            return len(self.vocabularies[name]) + 2  # 0 padding, 1 OOV
        if col.hash_buckets is not None:
            return col.hash_buckets + 1
        if col.derive == "bucketize":
            return len(self.boundaries[name]) + 2
        return len(self.vocabularies[name]) + 1  # 0 OOV

    @property
    def features(self) -> FeatureSpec:
        schema = self.schema
        return FeatureSpec(
            categorical=tuple(CategoricalField(c.name, self.vocab_size(c.name)) for c in schema.categorical),
            numeric=tuple(NumericField(c.name) for c in schema.numeric),
            sequence=tuple(
                SequenceField(c.name, self.vocab_size(c.name), c.max_len) for c in schema.sequence
            ),
            tasks=tuple(TaskSpec(label.name, label.weight) for label in schema.labels),
        )

    def encode(self, columns: dict[str, pa.Array], labels: np.ndarray | None = None, weights: np.ndarray | None = None) -> "Batch":
        """Raw columns (as read) → model inputs (``labels [n, T]`` and ``weights [n]`` attached
        if given); unknown values get the OOV id."""
        from mldcn.batch import Batch  # noqa: PLC0415  (see TYPE_CHECKING above)

        arrays = self.encode_arrays(columns)
        return Batch.from_numpy(arrays["categorical"], arrays["numeric"], arrays["sequence"], labels, weights)

    def encode_arrays(self, columns: dict[str, pa.Array]) -> dict[str, np.ndarray | None]:
        """:meth:`encode` as numpy arrays: ``categorical`` int32 ``[n, Fc]``, ``numeric``
        float32 ``[n, Fn]``, ``sequence`` int32 ``[n, Fs, L]`` (None without multi-valued fields)."""
        schema = self.schema
        n = len(next(iter(columns.values())))
        categorical = np.zeros((n, len(schema.categorical)), dtype=np.int32)
        for j, col in enumerate(schema.categorical):
            raw = columns[col.column]
            if col.derive == "bucketize":
                values = as_float(raw, col.fill)
                categorical[:, j] = np.searchsorted(self.boundaries[col.name], values, side="right") + 1
                continue
            strings = categorical_strings(col, raw)
            if col.hash_buckets is not None:  # ids 1..N; a missing value keeps the OOV id 0
                missing = np.asarray(pc.equal(strings, ""), dtype=bool)
                categorical[:, j] = np.where(missing, 0, stable_hash(strings, col.hash_buckets))
            else:
                ids = pc.index_in(strings, value_set=self.vocabularies[col.name])
                categorical[:, j] = np.asarray(pc.fill_null(pc.add(ids, 1), 0), dtype=np.int32)
        numeric = np.zeros((n, len(schema.numeric)), dtype=np.float32)
        for j, col in enumerate(schema.numeric):
            v = numeric_values(col, columns[col.column])
            if col.transform in ("standardize", "log_standardize"):
                stats = self.numeric_stats[col.name]
                v = (v - stats["mean"]) / stats["std"]
            numeric[:, j] = v
        sequence = None
        if schema.sequence:
            length = max(c.max_len for c in schema.sequence)
            sequence = np.zeros((n, len(schema.sequence), length), dtype=np.int32)
            for j, col in enumerate(schema.sequence):
                values, parent = sequence_lists(col, columns[col.column])
                ids = pc.index_in(values, value_set=self.vocabularies[col.name])
                ids = np.asarray(pc.fill_null(pc.add(ids, 2), 1), dtype=np.int32)
                counts = np.bincount(parent, minlength=n)
                starts = np.cumsum(counts) - counts
                position = np.arange(parent.size) - starts[parent]
                keep = position < col.max_len
                sequence[parent[keep], j, position[keep]] = ids[keep]
        return {"categorical": categorical, "numeric": numeric, "sequence": sequence}

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write ``feature_map.json`` and ``vocab/<field>.parquet`` under ``directory``."""
        directory = Path(directory)
        (directory / "vocab").mkdir(parents=True, exist_ok=True)
        vocab_files = {}
        for name, vocab in self.vocabularies.items():
            file = f"vocab/{name}.parquet"
            pq.write_table(pa.table({"value": vocab}), directory / file)
            vocab_files[name] = {"file": file, "values": len(vocab)}
        feature_map = {
            "format_version": FORMAT_VERSION,
            "schema": self.schema.to_dict(),
            "features": self.features.to_dict(),
            "vocabularies": vocab_files,
            "numeric_stats": self.numeric_stats,
            "boundaries": {k: v.tolist() for k, v in self.boundaries.items()},
            "train_rows": self.train_rows,
            **(extra or {}),
        }
        write_text_atomic(directory / "feature_map.json", json.dumps(feature_map, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Encoder":
        """The fitted preprocessing of a prepared directory or an artifact (either format
        version: version 2 changed the label arrays, not the preprocessing)."""
        feature_map = read_feature_map(directory, versions=(1, FORMAT_VERSION))
        directory = Path(directory)
        schema = schema_from_dict(feature_map["schema"], where=f"{directory}/feature_map.json schema")
        vocabularies = {}
        for name, entry in feature_map["vocabularies"].items():
            path = directory / entry["file"]
            if not path.exists():
                raise FeatureMapError(f"{path}: vocabulary file missing")
            vocabularies[name] = pq.read_table(path)["value"].combine_chunks()
        boundaries = {k: np.asarray(v, dtype=np.float64) for k, v in feature_map["boundaries"].items()}
        return cls(schema, vocabularies, feature_map["numeric_stats"], boundaries, feature_map["train_rows"])


def read_feature_map(directory: str | Path, versions: tuple[int, ...] = (FORMAT_VERSION,)) -> dict:
    """``feature_map.json`` of ``directory``, refused unless its format version is in ``versions``."""
    path = Path(directory) / "feature_map.json"
    if not path.exists():
        raise FeatureMapError(f"{path}: not found (is {directory} a directory written by `mldcn prepare`?)")
    try:
        feature_map = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FeatureMapError(f"{path}: not valid JSON ({error})") from None
    version = feature_map.get("format_version")
    if version not in versions:
        raise FeatureMapError(
            f"{path}: format version {version!r}, this mldcn reads version {FORMAT_VERSION}; "
            "prepare the data again"
        )
    return feature_map
