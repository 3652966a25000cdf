"""What a served model takes in: raw records or columns → the model's input arrays.

Two kinds of artifact, two codecs with one interface:

* :class:`RawInputs` (a model trained on ``mldcn prepare`` data): the raw columns
  of the schema, exactly as in the raw files, encoded with the training
  :class:`~mldcn.data.encode.Encoder` (unknown categories → the OOV id).
* :class:`IdInputs` (a model trained on already-encoded data, e.g. the synthetic
  log): one value per model field, ids checked against the vocabulary sizes.

Both turn JSON records (``encode_records``, the HTTP server) and Arrow columns
read from a file (``encode_columns``, ``mldcn predict``) into an
:class:`~mldcn.batch.Batch` (without labels). A record with a missing field or a value of
the wrong type raises :class:`RecordError` naming the record and the field.

Records are encoded in two stages (:class:`Codec`), so that the server's
dynamic batching (:mod:`mldcn.serve.batching`) checks each request on its own
and encodes the good ones of a batch together: ``check(records)`` applies every
rule a record can break on its own; ``encode(parts)`` encodes several checked
requests as one batch and refuses, per request, what shows only once encoded.
``encode_records(records)`` is the two stages for one request.

JSON values of a raw record become the text a CSV file would hold, so a record
and the same row of a file are encoded identically: strings as they are, integers
in decimal (``5`` → ``"5"``), floats in their shortest round-trip form
(``0.25`` → ``"0.25"``; ``1.0`` → ``"1.0"``, so send categories as strings when
the file's text matters), ``null`` as a missing value (an empty field), and a
list in a multi-valued field joined with the schema's separator.

NaN and infinities (Python's json reads the literals ``NaN``, ``Infinity`` and
``-Infinity``, and ``1e400`` as infinity) follow the project's rule: a NaN is a
missing value, exactly as ``null``; an infinity is refused, as is a number that
overflows the model's float32 inputs.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from mldcn.batch import Batch
from mldcn.data.encode import Encoder
from mldcn.data.readers import DataError, as_float, as_string
from mldcn.data.schema import (
    CategoricalColumn,
    DataSchema,
    NumericColumn,
    SequenceColumn,
)
from mldcn.features import FeatureSpec

# the number syntax of the data readers (mldcn.data.readers): what a CSV numeric field may hold
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SHOWN_CHARACTERS = 40  # of a value quoted in an error message


class RecordError(ValueError):
    """A request record is missing a field or has a value of the wrong type."""

    def __init__(self, index: int, field: str | None, problem: str) -> None:
        where = f"record {index}" + (f", field {field!r}" if field is not None else "")
        super().__init__(f"{where}: {problem}")
        self.index = index
        self.field = field


@dataclass(frozen=True)
class InputField:
    """One field of a request record.

    Attributes:
        name: the key in a record (a raw column, or a model field for id inputs).
        kind: ``text`` (a category, any string or number), ``number`` (an int, a
            float or a numeric string), ``multi`` (a separated string or a list),
            ``id`` (an integer id), ``ids`` (a list of integer ids).
        features: the model features read from it.
        json_type: its JSON schema (for the OpenAPI docs).
    """

    name: str
    kind: str
    features: tuple[str, ...]
    json_type: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "features": list(self.features)}


def quoted(text: str) -> str:
    """``repr(text)`` for an error message, cut after a few dozen characters."""
    if len(text) <= _SHOWN_CHARACTERS:
        return repr(text)
    return f"{text[:_SHOWN_CHARACTERS]!r}... ({len(text):,} characters)"


def _literal(value: float) -> str:
    """A NaN or an infinity as the JSON literal Python's json reads and writes for it."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def json_kind(value: Any) -> str:
    """What a JSON value is, for error messages ("an object", "the string 'x'", "the number 2.5", "NaN", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {quoted(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return _literal(value)
    digits = str(value) if isinstance(value, int) else repr(value)
    return f"the number {digits[:_SHOWN_CHARACTERS]}" + ("..." if len(digits) > _SHOWN_CHARACTERS else "")


def _text(value: Any, index: int, field: str) -> str | None:
    """A scalar as the text a CSV field would hold (None = missing: null or NaN)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(index, field, f"expected a string or a number, got {json_kind(value)}")
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise RecordError(index, field, f"{_literal(value)} is not a finite number")
    return repr(value)


def _number_text(value: Any, index: int, field: str) -> str | None:
    """A numeric field's text: the data readers' number syntax, finite (``"1e400"`` is not)."""
    text = _text(value, index, field)
    if text is not None and text != "":
        if not _NUMBER.match(text):
            raise RecordError(index, field, f"{quoted(text)} is not a number")
        if not math.isfinite(float(text)):
            raise RecordError(index, field, f"{quoted(text)} is not a finite number")
    return text


class Codec:
    """The two stages of encoding records, shared by both codecs (module docstring)."""

    def check(self, records: list) -> Any:
        """One request's records, checked: a part for :meth:`encode`, or :class:`RecordError`."""
        raise NotImplementedError

    def rows(self, part: Any) -> int:
        """The number of records of a checked request."""
        raise NotImplementedError

    def encode(self, parts: list) -> tuple[Batch, list[RecordError | None]]:
        """Checked requests → the model inputs of their rows, in order, and each request's error
        (a request with an error has no rows in the batch)."""
        raise NotImplementedError

    def encode_records(self, records: list) -> Batch:
        """JSON records (``[{field: value}]``) → model inputs; :class:`RecordError` on a bad one."""
        encoded, errors = self.encode([self.check(records)])
        if errors[0] is not None:
            raise errors[0]
        return encoded


class RawInputs(Codec):
    """Raw records or file columns → model inputs, through the training preprocessing.

    Args:
        encoder: the fitted preprocessing saved in the artifact.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.schema: DataSchema = encoder.schema
        schema = self.schema
        numeric_sources = {c.column for c in schema.numeric}
        numeric_sources |= {c.column for c in schema.categorical if c.derive in ("log_square_bucket", "bucketize")}
        separators = {c.column: c.separator for c in schema.sequence}
        readers: dict[str, list[str]] = {}
        for col in (*schema.categorical, *schema.numeric, *schema.sequence):
            readers.setdefault(col.column, []).append(col.name)
        fields = []
        for column, features in readers.items():
            if column in numeric_sources:
                kind, json_type = "number", {"type": ["number", "string", "null"]}
            elif column in separators:
                kind = "multi"
                json_type = {"type": ["string", "array", "null"], "items": {"type": ["string", "integer"]}}
            else:
                kind, json_type = "text", {"type": ["string", "number", "null"]}
            fields.append(InputField(column, kind, tuple(features), json_type))
        self.fields: tuple[InputField, ...] = tuple(fields)
        self._separators = separators

    @property
    def features(self) -> FeatureSpec:
        return self.encoder.features

    def encode_columns(self, columns: dict[str, pa.Array], lines: np.ndarray | None = None) -> Batch:
        """Columns as the data readers give them (validated) → model inputs."""
        return self.encoder.encode(columns)

    def check(self, records: list) -> dict[str, list[str | None]]:
        """Every rule a raw record can break on its own, checked: each field's texts, or :class:`RecordError`."""
        values: dict[str, list[str | None]] = {f.name: [] for f in self.fields}
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise RecordError(index, None, f"expected an object of field values, got {json_kind(record)}")
            for field in self.fields:
                if field.name not in record:
                    raise RecordError(index, field.name, "missing (send null for a missing value)")
                value = record[field.name]
                if field.kind == "number":
                    text = _number_text(value, index, field.name)
                elif field.kind == "multi" and isinstance(value, list):
                    parts = [_text(v, index, field.name) for v in value]
                    if any(p is None for p in parts):
                        raise RecordError(index, field.name, "a list of values may not hold null or NaN")
                    text = self._separators[field.name].join(parts)
                else:
                    text = _text(value, index, field.name)
                values[field.name].append(text)
        return values

    def rows(self, part: dict[str, list]) -> int:
        return len(next(iter(part.values())))

    def encode(self, parts: list[dict[str, list]]) -> tuple[Batch, list[RecordError | None]]:
        """The checked texts of several requests → one encoding of their rows, in order, and each
        request's error: a number that the schema's transform takes past float32 refuses its
        request, whose rows are left out."""
        sizes = [self.rows(part) for part in parts]
        starts = np.cumsum([0, *sizes])  # request k holds rows starts[k]:starts[k + 1]
        columns = {f.name: pa.array(list(chain.from_iterable(part[f.name] for part in parts)), pa.string()) for f in self.fields}
        with np.errstate(over="ignore"):  # an overflow of float32 is refused below
            encoded = self.encoder.encode(columns)
        errors: list[RecordError | None] = [None] * len(parts)
        overflow = ~np.isfinite(encoded.numeric.numpy())  # [B, Fn], e.g. 1e39 with transform none
        if not overflow.any():
            return encoded, errors
        for row, j in np.argwhere(overflow):  # row-major: each request's first bad row
            k = bisect.bisect_right(starts, row) - 1
            if errors[k] is None:
                local, column = int(row - starts[k]), self.schema.numeric[j]
                text = parts[k][column.column][local]
                errors[k] = RecordError(local, column.column, f"{quoted(text)} overflows the model's float32 input {column.name!r}")
        keep = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in range(len(parts)) if errors[k] is None] or [[]])
        return encoded.take(torch.from_numpy(keep.astype(np.int64))), errors

    def example(self) -> dict:
        """A record of frequent values (for the OpenAPI docs)."""
        record: dict[str, Any] = {}
        for field in self.fields:
            if field.kind == "number":
                record[field.name] = 0
                continue
            vocab = self.encoder.vocabularies.get(field.features[0])
            value = vocab[0].as_py() if vocab is not None and len(vocab) else ""
            record[field.name] = [value] if field.kind == "multi" else value
        return record


class IdInputs(Codec):
    """Records or file columns of already-encoded ids → model inputs.

    A categorical field takes an integer id in ``[0, vocab_size)`` (0 is the OOV
    id), a numeric field a number (null or NaN: missing, 0.0 as in a file), a
    multi-valued field a list of ids in ``[1, vocab_size)`` (a file holds them
    ``|``-separated); ids past ``max_len`` are dropped, as the raw preprocessing does.
    """

    def __init__(self, features: FeatureSpec) -> None:
        self._features = features
        fields = [
            InputField(f.name, "id", (f.name,), {"type": "integer", "minimum": 0, "maximum": f.vocab_size - 1})
            for f in features.categorical
        ]
        fields += [InputField(f.name, "number", (f.name,), {"type": "number"}) for f in features.numeric]
        fields += [
            InputField(
                f.name, "ids", (f.name,),
                {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": f.vocab_size - 1}},
            )
            for f in features.sequence
        ]  # fmt: skip
        self.fields: tuple[InputField, ...] = tuple(fields)

    @property
    def features(self) -> FeatureSpec:
        return self._features

    def file_schema(self, format: str = "csv") -> DataSchema:
        """How a file of ids is read (CSV with a header, or Parquet): one column per model field."""
        if format not in ("csv", "parquet"):
            raise ValueError(f"a model that takes ids reads CSV or Parquet files, not {format}")
        features = self._features
        return DataSchema(
            name="ids",
            format=format,
            categorical=tuple(CategoricalColumn(f.name) for f in features.categorical),
            numeric=tuple(NumericColumn(f.name) for f in features.numeric),
            sequence=tuple(SequenceColumn(f.name, max_len=f.max_len) for f in features.sequence),
        )

    def check(self, records: list) -> Batch:
        """Every id and number checked, per record (numpy: no per-call cost for a batch to save)."""
        features = self._features
        n = len(records)
        categorical = np.zeros((n, len(features.categorical)), dtype=np.int64)
        numeric = np.zeros((n, len(features.numeric)), dtype=np.float32)
        length = features.sequence_length
        sequence = np.zeros((n, len(features.sequence), length), dtype=np.int64) if features.sequence else None
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise RecordError(index, None, f"expected an object of field values, got {json_kind(record)}")
            for f in (*features.categorical, *features.numeric, *features.sequence):
                if f.name not in record:
                    raise RecordError(index, f.name, "missing")
            for j, f in enumerate(features.categorical):
                categorical[index, j] = self._id(record[f.name], f.vocab_size, 0, index, f.name)
            for j, f in enumerate(features.numeric):
                numeric[index, j] = self._number(record[f.name], index, f.name)
            for j, f in enumerate(features.sequence):
                value = record[f.name]
                if not isinstance(value, list):
                    raise RecordError(index, f.name, f"expected a list of ids, got {json_kind(value)}")
                ids = [self._id(v, f.vocab_size, 1, index, f.name) for v in value[: f.max_len]]
                sequence[index, j, : len(ids)] = ids
        return Batch.from_numpy(categorical, numeric, sequence)

    def rows(self, part: Batch) -> int:
        return len(part)

    def encode(self, parts: list[Batch]) -> tuple[Batch, list[RecordError | None]]:
        """The checked requests' batches, one after the other (nothing can fail once checked)."""
        if len(parts) == 1:
            return parts[0], [None]
        columns = zip(*((b.categorical, b.numeric, b.sequence) for b in parts))
        return Batch(*(None if values[0] is None else torch.cat(values) for values in columns)), [None] * len(parts)

    @staticmethod
    def _number(value: Any, index: int, field: str) -> float:
        """A numeric field's value; null and NaN are missing, filled with 0.0 as in a file (``encode_columns``)."""
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(index, field, f"expected a number, got {json_kind(value)}")
        if isinstance(value, float) and math.isnan(value):
            return 0.0
        if isinstance(value, float) and math.isinf(value):
            raise RecordError(index, field, f"{_literal(value)} is not a finite number")
        if abs(value) > _FLOAT32_MAX:  # an int of any size compares exactly
            raise RecordError(index, field, f"{json_kind(value)} is outside the float32 range (±3.4e38)")
        return float(value)

    @staticmethod
    def _id(value: Any, vocab_size: int, low: int, index: int, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(index, field, f"expected an integer id, got {json_kind(value)}")
        if not low <= value < vocab_size:
            raise RecordError(index, field, f"id {value} is outside [{low}, {vocab_size})")
        return value

    def encode_columns(self, columns: dict[str, pa.Array], lines: np.ndarray | None = None) -> Batch:
        """Columns of a file read with :meth:`file_schema` → model inputs; ids are checked."""
        features = self._features
        n = len(next(iter(columns.values())))
        lines = lines if lines is not None else np.arange(1, n + 1)
        categorical = np.zeros((n, len(features.categorical)), dtype=np.int64)
        for j, f in enumerate(features.categorical):
            categorical[:, j] = self._column_ids(columns[f.name], f.name, f.vocab_size, 0, lines)
        numeric = np.zeros((n, len(features.numeric)), dtype=np.float32)
        for j, f in enumerate(features.numeric):
            numeric[:, j] = as_float(columns[f.name], 0.0)
        sequence = None
        if features.sequence:
            sequence = np.zeros((n, len(features.sequence), features.sequence_length), dtype=np.int64)
            for j, f in enumerate(features.sequence):
                for row, text in enumerate(as_string(columns[f.name]).to_pylist()):
                    parts = [p for p in text.split("|") if p][: f.max_len]
                    try:
                        ids = [int(p) for p in parts]
                    except ValueError:
                        raise DataError(f"line {lines[row]}: field {f.name!r}: {text!r} is not a list of ids") from None
                    bad = [i for i in ids if not 1 <= i < f.vocab_size]
                    if bad:
                        raise DataError(f"line {lines[row]}: field {f.name!r}: id {bad[0]} is outside [1, {f.vocab_size})")
                    sequence[row, j, : len(ids)] = ids
        return Batch.from_numpy(categorical, numeric, sequence)

    @staticmethod
    def _column_ids(raw: pa.Array, name: str, vocab_size: int, low: int, lines: np.ndarray) -> np.ndarray:
        values = as_float(raw, np.nan)
        ok = np.isfinite(values) & (values == np.round(values)) & (values >= low) & (values < vocab_size)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(
                f"line {lines[row]}: field {name!r}: {raw[row].as_py()!r} is not an id in [{low}, {vocab_size})"
            )
        return values.astype(np.int64)

    def example(self) -> dict:
        record: dict[str, Any] = {f.name: 1 % f.vocab_size for f in self._features.categorical}
        record.update({f.name: 0.0 for f in self._features.numeric})
        record.update({f.name: [1] for f in self._features.sequence})
        return record


def input_codec(encoder: Encoder | None, features: FeatureSpec) -> RawInputs | IdInputs:
    """The codec of an artifact: raw inputs with preprocessing, ids without."""
    return RawInputs(encoder) if encoder is not None else IdInputs(features)
