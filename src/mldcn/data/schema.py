"""Data schema: how the columns of a raw click log become model features.

A schema is YAML (or JSON) validated into :class:`DataSchema`; unknown keys are
errors. Built-in schemas live in ``mldcn/data/schemas/*.yaml``
(``criteo``, ``avazu``, ``frappe``, ``frappe_libfm``, ``movielens``, ``taobao``);
``load_schema("criteo")`` or ``load_schema("my_schema.yaml")``.

Ids written by ``mldcn prepare``:

* categorical field: 0 = out of vocabulary (unseen in train, or rarer than
  ``min_count``), 1..V = the vocabulary, most frequent first. A missing value
  (empty field) is a value of its own, the empty string, with its own id when
  it is frequent enough (the BARS/FuxiCTR ``na_value: ""`` convention); with
  ``hash_buckets`` a missing value gets id 0;
* multi-valued field: 0 = padding, 1 = out of vocabulary, 2..V+1 = the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mldcn.config import Config, ConfigError, from_dict, load_yaml, to_dict

SCHEMA_DIR = Path(__file__).parent / "schemas"

Derivation = Literal["none", "hour_of_day", "weekday", "weekend", "log_square_bucket", "bucketize"]


@dataclass(frozen=True)
class CategoricalColumn(Config):
    """A categorical feature.

    Attributes:
        name: feature name.
        source: raw column it is read from (default: ``name``).
        min_count: values seen fewer times in the training split map to the OOV id
            (default: the schema's ``min_count``).
        hash_buckets: hash the raw value into this many buckets instead of fitting
            a vocabulary (for huge vocabularies; ids 1..N, 0 stays OOV for missing).
        derive: a transform of the raw value first: ``hour_of_day`` / ``weekday`` /
            ``weekend`` of an Avazu ``YYMMDDHH`` hour; ``log_square_bucket``, the
            BARS/Criteo numeric bucketing ``floor(ln(v)²) if v > 2 else int(v)``
            (missing → ``fill``); ``bucketize`` into ``num_buckets`` quantile
            buckets fitted on train.
        fill: the raw value used for a missing numeric (``log_square_bucket``,
            ``bucketize``).
        num_buckets: number of quantile buckets for ``bucketize``.
    """

    name: str
    source: str | None = None
    min_count: int | None = None
    hash_buckets: int | None = None
    derive: Derivation = "none"
    fill: float = 0.0
    num_buckets: int = 10

    _positive = ("min_count", "hash_buckets", "num_buckets")

    @property
    def column(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class NumericColumn(Config):
    """A numeric feature.

    Attributes:
        name: feature name.
        source: raw column (default: ``name``).
        fill: value used where the raw value is missing.
        transform: ``none``; ``log``: sign(v)·ln(1 + |v|); ``standardize``:
            (v − mean) / std with train statistics; ``log_standardize``: both.
    """

    name: str
    source: str | None = None
    fill: float = 0.0
    transform: Literal["none", "log", "standardize", "log_standardize"] = "none"

    @property
    def column(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class SequenceColumn(Config):
    """A multi-valued feature (``Action|Comedy``), mean-pooled by the embedding.

    The first ``max_len`` values of a row are kept.
    """

    name: str
    source: str | None = None
    separator: str = "|"
    max_len: int = 16
    min_count: int | None = None

    _positive = ("max_len", "min_count")

    @property
    def column(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class LabelColumn(Config):
    """The click label.

    Without ``threshold`` the raw value must be 0 or 1. With it, the raw value must
    be a number and the label is ``value > threshold`` (ratings: threshold 3;
    libfm's ±1 labels: threshold 0).
    """

    name: str = "label"
    threshold: float | None = None


@dataclass(frozen=True)
class DataSchema(Config):
    """How to read a click log and which features to build from it.

    Attributes:
        name: schema name (recorded in the prepared data).
        format: ``csv`` (any delimiter, .gz ok), ``libfm`` (``label id:1 id:1 ...``,
            the i-th feature of a row becomes field ``f{i}``) or ``parquet``.
        delimiter: field separator for ``csv`` (``"\\t"`` for TSV).
        header: the first line names the columns.
        column_names: the columns, when there is no header.
        label: the label column.
        categorical / numeric / sequence: the features.
        min_count: default vocabulary threshold of categorical and multi-valued columns.
    """

    name: str = "custom"
    format: Literal["csv", "libfm", "parquet"] = "csv"
    delimiter: str = ","
    header: bool = True
    column_names: tuple[str, ...] = ()
    label: LabelColumn = field(default_factory=LabelColumn)
    categorical: tuple[CategoricalColumn, ...] = ()
    numeric: tuple[NumericColumn, ...] = ()
    sequence: tuple[SequenceColumn, ...] = ()
    min_count: int = 1

    _positive = ("min_count",)

    def __post_init__(self) -> None:
        super().__post_init__()
        names = [c.name for c in (*self.categorical, *self.numeric, *self.sequence)]
        if not names:
            raise ConfigError(f"schema {self.name!r} declares no features")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"schema {self.name!r}: duplicate feature names {duplicates}")
        if self.format == "csv" and not self.header and not self.column_names:
            raise ConfigError(f"schema {self.name!r}: a CSV without header needs column_names")
        if len(self.delimiter) != 1:
            raise ConfigError(f"schema {self.name!r}: delimiter must be one character, got {self.delimiter!r}")

    def raw_columns(self) -> list[str]:
        """The raw columns this schema reads, label first, each once."""
        columns = [self.label.name]
        for col in (*self.categorical, *self.numeric, *self.sequence):
            if col.column not in columns:
                columns.append(col.column)
        return columns

    def min_count_of(self, column: CategoricalColumn | SequenceColumn) -> int:
        return column.min_count if column.min_count is not None else self.min_count

    def to_dict(self) -> dict:
        return to_dict(self)


def schema_from_dict(data: dict, where: str = "schema") -> DataSchema:
    return from_dict(DataSchema, data, where)


def builtin_schemas() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml"))


def load_schema(name_or_path: str | Path) -> DataSchema:
    """A built-in schema by name, or a schema YAML/JSON file."""
    path = Path(name_or_path)
    if not path.exists() and (SCHEMA_DIR / f"{name_or_path}.yaml").exists():
        path = SCHEMA_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(
            f"schema {str(name_or_path)!r} is neither a file nor a built-in schema ({builtin_schemas()})"
        )
    return schema_from_dict(load_yaml(path), where=str(path))
