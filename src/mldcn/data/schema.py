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

import dataclasses
from dataclasses import dataclass
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
    """A label: one task of the model (click, good click, conversion ...).

    The rule that turns the raw value into 0/1 is one of:

    * none: the raw value must be 0 or 1;
    * ``threshold``: the raw value must be a number; the label is ``value > threshold``
      (ratings: threshold 3; libfm's ±1 labels: threshold 0);
    * ``equals``: the label is ``value == equals`` (as text, e.g. ``">50K"``);
    * ``in`` (``in_`` in Python): the label is ``value in [...]``.

    A missing value, or a value the rule cannot read, makes the row a bad row.

    Attributes:
        name: the task's name (and the raw column, unless ``source`` is given).
        source: the raw column it is read from (default: ``name``).
        weight: the task's weight in the training loss.
    """

    name: str = "label"
    source: str | None = None
    threshold: float | None = None
    equals: str | None = None
    in_: tuple[str, ...] | None = None
    weight: float = 1.0

    _non_negative = ("weight",)

    def __post_init__(self) -> None:
        super().__post_init__()
        rules = [r for r in ("threshold", "equals", "in_") if getattr(self, r) is not None]
        if len(rules) > 1:
            raise ConfigError(f"label {self.name!r}: give one rule of threshold, equals and in, not {rules}")

    @property
    def column(self) -> str:
        return self.source or self.name

    @property
    def is_text_rule(self) -> bool:
        """``equals`` / ``in``: any present value is valid, matched as text."""
        return self.equals is not None or self.in_ is not None

    def to_dict(self) -> dict:
        data = to_dict(self)
        data["in"] = data.pop("in_")
        return data


def label_from_dict(data: dict, where: str) -> LabelColumn:
    """A label mapping (``in`` is spelled ``in_`` in Python) → :class:`LabelColumn`."""
    if isinstance(data, dict) and "in" in data:
        data = {**{k: v for k, v in data.items() if k != "in"}, "in_": data["in"]}
    return from_dict(LabelColumn, data, where)


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
        labels: the labels, one per task (a data set with one label: one task).
            The single-label form ``label: {...}`` is read as ``labels: [{...}]``;
            without either the label is the column ``label``.
        categorical / numeric / sequence: the features.
        weight: a column of per-row loss weights (numbers >= 0, e.g. the inverse
            rate of a negative down-sampling); None: every row weighs 1. A
            missing, negative or non-numeric weight makes the row a bad row.
        min_count: default vocabulary threshold of categorical and multi-valued columns.
    """

    name: str = "custom"
    format: Literal["csv", "libfm", "parquet"] = "csv"
    delimiter: str = ","
    header: bool = True
    column_names: tuple[str, ...] = ()
    labels: tuple[LabelColumn, ...] = (LabelColumn(),)
    categorical: tuple[CategoricalColumn, ...] = ()
    numeric: tuple[NumericColumn, ...] = ()
    sequence: tuple[SequenceColumn, ...] = ()
    weight: str | None = None
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
        if not self.labels:
            raise ConfigError(f"schema {self.name!r} declares no labels")
        tasks = [label.name for label in self.labels]
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"schema {self.name!r}: duplicate label names {sorted({t for t in tasks if tasks.count(t) > 1})}")
        features = {col.column: col.name for col in (*self.categorical, *self.numeric, *self.sequence)}
        for label in self.labels:
            if label.column in features:
                raise ConfigError(
                    f"schema {self.name!r}: column {label.column!r} is label {label.name!r} and also feature "
                    f"{features[label.column]!r}; a label must not be a feature (drop the feature)"
                )
        if self.weight is not None and (self.weight in features or self.weight in self.label_columns):
            raise ConfigError(f"schema {self.name!r}: the weight column {self.weight!r} is also a feature or a label")
        if self.weight is not None and self.format == "libfm":
            raise ConfigError(f"schema {self.name!r}: a libfm file has no weight column")
        if self.format == "libfm" and len(self.labels) != 1:
            raise ConfigError(f"schema {self.name!r}: a libfm file has one label, the schema declares {len(self.labels)}")

    @property
    def label_columns(self) -> list[str]:
        """The raw columns the labels read, each once, in label order."""
        return list(dict.fromkeys(label.column for label in self.labels))

    def raw_columns(self) -> list[str]:
        """The raw columns this schema reads, labels (and the weight) first, each once."""
        columns = self.label_columns + ([self.weight] if self.weight is not None else [])
        for col in (*self.categorical, *self.numeric, *self.sequence):
            if col.column not in columns:
                columns.append(col.column)
        return columns

    def min_count_of(self, column: CategoricalColumn | SequenceColumn) -> int:
        return column.min_count if column.min_count is not None else self.min_count

    def to_dict(self) -> dict:
        return {**to_dict(self), "labels": [label.to_dict() for label in self.labels]}


def schema_from_dict(data: dict, where: str = "schema") -> DataSchema:
    """Validate a schema mapping; ``label: {...}`` (one label) is the same as ``labels: [{...}]``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    data = dict(data)
    if "label" in data and "labels" in data:
        raise ConfigError(f"{where}: give `label` (one) or `labels` (a list), not both")
    if "label" in data:
        data["labels"] = [data.pop("label")]
    if "labels" in data:
        labels = data.pop("labels")
        if not isinstance(labels, list) or not labels:
            raise ConfigError(f"{where}.labels: expected a non-empty list of label mappings")
        parsed = tuple(label_from_dict(label, f"{where}.labels[{i}]") for i, label in enumerate(labels))
        return dataclasses.replace(from_dict(DataSchema, data, where), labels=parsed)
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
