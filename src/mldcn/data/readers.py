"""Streaming readers for CSV/TSV (optionally compressed), libfm and Parquet click logs.

A reader yields :class:`RawChunk` s: the columns a schema needs, as Arrow arrays,
with the file line (or Parquet row) number of every row, after validating each
row. A bad row (wrong column count, missing or non-binary label, non-numeric
value in a numeric field, libfm feature that is not ``id:1``) either raises a
:class:`DataError` naming file, line and field, or, with ``on_bad_rows="skip"``,
is dropped and recorded in :class:`ReadStats` — rows read = rows kept + rows
skipped, always.

Parsing and validation are vectorised (Arrow C++ kernels); memory is bounded by
the chunk size, so a file larger than memory streams.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from mldcn.data.schema import DataSchema

OnBadRows = Literal["error", "skip"]
CHUNK_BYTES = 8 << 20
PARQUET_BATCH_ROWS = 262_144
MAX_BAD_ROW_EXAMPLES = 20

_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


class DataError(ValueError):
    """Bad input data. The message names the file, the line and the field."""


@dataclass
class BadRow:
    line: int
    reason: str


@dataclass
class ReadStats:
    """Row accounting of one input file: ``rows_read == rows_kept + rows_skipped``."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_skipped: int = 0
    examples: list[BadRow] = field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        self.rows_skipped += 1
        if len(self.examples) < MAX_BAD_ROW_EXAMPLES:
            self.examples.append(BadRow(int(line), reason))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": self.rows_skipped,
            "skipped_examples": [{"line": b.line, "reason": b.reason} for b in self.examples],
        }


@dataclass
class RawChunk:
    """Validated rows: ``columns[name]`` are Arrow arrays; ``lines`` their line numbers."""

    columns: dict[str, pa.Array]
    lines: np.ndarray
    labels: np.ndarray  # float32 [n, T] in {0, 1}, one column per label (NaN when read with require_label=False)

    def __len__(self) -> int:
        return len(self.lines)


def read_chunks(
    path: str | Path,
    schema: DataSchema,
    on_bad_rows: OnBadRows = "error",
    stats: ReadStats | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    extra_columns: list[str] | tuple[str, ...] = (),
    require_label: bool = True,
) -> Iterator[RawChunk]:
    """Validated chunks of ``path`` under ``schema``; ``stats`` accumulates the row counts.

    ``extra_columns`` are read too (e.g. the time column of a time split). With
    ``require_label=False`` (rows to predict) the label column is neither read nor
    checked and may be absent; the chunks' ``label`` is then NaN.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats(str(path))
    if not path.exists():
        raise DataError(f"{path}: file not found")
    columns = schema.raw_columns() if require_label else _feature_columns(schema)
    needed = columns + [c for c in extra_columns if c not in columns]
    if schema.format == "parquet":
        batches = _parquet_batches(path, needed)
    else:
        batches = _csv_batches(path, schema, needed, stats, chunk_bytes, on_bad_rows)
    rows_before = stats.rows_read
    for columns, lines in batches:
        if schema.format == "parquet":
            stats.rows_read += len(lines)
        chunk = _validate(path, schema, columns, lines, stats, on_bad_rows, require_label)
        if len(chunk):
            yield chunk
    if stats.rows_read == rows_before:
        raise DataError(f"{path}: no data rows (the file is empty)")


def _feature_columns(schema: DataSchema) -> list[str]:
    """The raw columns the features read, each once (no label column: a label is never a feature)."""
    columns: list[str] = []
    for col in (*schema.categorical, *schema.numeric, *schema.sequence):
        if col.column not in columns:
            columns.append(col.column)
    return columns


def _csv_batches(
    path: Path,
    schema: DataSchema,
    needed: list[str],
    stats: ReadStats,
    chunk_bytes: int,
    on_bad_rows: OnBadRows = "error",
) -> Iterator[tuple[dict[str, pa.Array], np.ndarray]]:
    """CSV/TSV/libfm record batches as string columns, with line numbers; bad rows go to stats.

    The parser reports the rows it rejects (wrong column count) while it parses,
    which runs a block ahead of the batches it returns: a rejected row is matched
    to a batch by its line number, never by when it was reported.
    """
    libfm = schema.format == "libfm"
    if libfm:
        names = [schema.labels[0].column] + [c.column for c in schema.categorical]
        header, delimiter = False, " "
    else:
        names = list(schema.column_names) if not schema.header else None
        header, delimiter = schema.header, schema.delimiter
    rejected: dict[int, str] = {}  # line -> reason, for rows the parser rejected and no batch claimed yet
    all_columns = names

    def invalid(row: pcsv.InvalidRow) -> str:
        nonlocal all_columns
        what = "an empty line" if not (row.text or "").strip() else f"{row.actual_columns}"
        reason = f"expected {row.expected_columns} columns, found {what}"
        if 0 < row.actual_columns < row.expected_columns:
            all_columns = all_columns or _header_names(path, delimiter)
            if row.actual_columns < len(all_columns):
                reason += f" (no value for field {all_columns[row.actual_columns]!r})"
        rejected[row.number] = reason
        return "skip"

    def claim(last_line: int | None) -> list[tuple[int, str]]:
        """The rejected rows up to ``last_line`` (all if None), counted in ``stats``."""
        lines = sorted(n for n in rejected if last_line is None or n <= last_line)
        claimed = [(n, rejected.pop(n)) for n in lines]
        stats.rows_read += len(claimed)
        if claimed and on_bad_rows == "skip":
            for line, reason in claimed:
                stats.skip(line, reason)
        return claimed

    def fail(line: int, reason: str) -> DataError:
        return DataError(f"{path}:{line}: {reason} (use --on-bad-rows skip to skip bad rows)")

    try:
        stream = pa.input_stream(str(path), compression="detect")
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(
                use_threads=False,
                block_size=chunk_bytes,
                column_names=names,
                autogenerate_column_names=False,
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter, invalid_row_handler=invalid, ignore_empty_lines=False
            ),
            convert_options=pcsv.ConvertOptions(
                include_columns=needed,
                column_types={c: pa.string() for c in needed},
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as error:
        raise DataError(f"{path}: {_explain(error, needed)}") from None

    next_line = 2 if header else 1
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(
                f"{path}: {_explain(error, needed)} (after line {next_line - 1})"
            ) from None
        n = batch.num_rows
        if n == 0:
            continue
        # the batch's rows are the next n lines that the parser did not reject
        skipped = np.asarray(sorted(line for line in rejected if line >= next_line), dtype=np.int64)
        candidates = np.arange(next_line, next_line + n + len(skipped), dtype=np.int64)
        lines = np.setdiff1d(candidates, skipped, assume_unique=True)[:n]
        next_line = int(lines[-1]) + 1
        claimed = claim(int(lines[-1]))
        stats.rows_read += n
        columns = {name: batch.column(name) for name in needed}
        if claimed and on_bad_rows == "error":
            first, reason = claimed[0]
            before = int(np.searchsorted(lines, first))  # rows before the bad one are checked first
            yield {k: v.slice(0, before) for k, v in columns.items()}, lines[:before]
            raise fail(first, reason)
        yield columns, lines
    claimed = claim(None)  # rejected rows after the last batch
    if claimed and on_bad_rows == "error":
        raise fail(*claimed[0])


def _header_names(path: Path, delimiter: str) -> list[str]:
    """The column names on the first line of a CSV (best effort, for error messages)."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            head = stream.read(1 << 16)
    except (pa.ArrowInvalid, OSError):
        return []
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    return [name.strip('"') for name in first.split(delimiter)]


def _parquet_batches(path: Path, needed: list[str]) -> Iterator[tuple[dict[str, pa.Array], np.ndarray]]:
    try:
        file = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    missing = [c for c in needed if c not in file.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {file.schema_arrow.names}")
    row = 1
    for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=needed):
        lines = np.arange(row, row + batch.num_rows, dtype=np.int64)
        row += batch.num_rows
        yield {name: batch.column(name) for name in needed}, lines


def _explain(error: Exception, needed: list[str]) -> str:
    text = str(error)
    if "Empty CSV file" in text:
        return "no data rows (the file is empty)"
    if "compressed" in text.lower() or "gzip" in text.lower():
        return f"truncated or corrupt compressed file ({text})"
    match = re.search(r"include_columns.*?'?([^'\s]+)'? does not exist|Column '?([^' ]+)'? in include_columns", text)
    if match or "does not exist" in text:
        return f"a column the schema needs is missing ({text}); the schema reads {needed}"
    return text


def _validate(
    path: Path,
    schema: DataSchema,
    columns: dict[str, pa.Array],
    lines: np.ndarray,
    stats: ReadStats,
    on_bad_rows: OnBadRows,
    require_label: bool = True,
) -> RawChunk:
    """Check label, numeric fields and libfm values; drop or raise on bad rows."""
    n = len(lines)
    bad = np.zeros(n, dtype=bool)
    reasons: list[tuple[np.ndarray, str]] = []

    def flag(mask: np.ndarray, reason) -> None:
        mask = mask & ~bad
        if mask.any():
            reasons.append((mask.copy(), reason))
            bad[:] |= mask

    # labels: one column per task
    if require_label:
        labels = np.zeros((n, len(schema.labels)), dtype=np.float64)
        for t, spec in enumerate(schema.labels):
            raw = columns[spec.column]
            null = _is_null(raw)
            flag(null, lambda i, spec=spec: f"field {spec.column!r}: missing label {spec.name!r}")
            if spec.is_text_rule:
                text = pc.cast(raw, pa.string()) if not pa.types.is_string(raw.type) else raw
                allowed = [spec.equals] if spec.equals is not None else list(spec.in_)
                labels[:, t] = np.asarray(pc.fill_null(pc.is_in(text, value_set=pa.array(allowed, pa.string())), False))
                continue
            value, numeric = _as_float(raw)
            flag(~numeric & ~null, lambda i, spec=spec, raw=raw: f"field {spec.column!r}: label {_show(raw, i)} is not a number")
            if spec.threshold is None:
                binary = (value == 0) | (value == 1)
                flag(~binary & numeric, lambda i, spec=spec, raw=raw: f"field {spec.column!r}: label must be 0 or 1, got {_show(raw, i)}")
                labels[:, t] = np.where(binary, value, 0.0)
            else:
                labels[:, t] = value > spec.threshold
    else:
        labels = np.full((n, len(schema.labels)), np.nan)

    # numeric sources
    numeric_sources = {c.column for c in schema.numeric}
    numeric_sources |= {c.column for c in schema.categorical if c.derive in ("log_square_bucket", "bucketize")}
    for name in sorted(numeric_sources):
        raw = columns[name]
        _, ok = _as_float(raw)
        flag(~ok & ~_is_null(raw), lambda i, name=name, raw=raw: f"field {name!r}: {_show(raw, i)} is not a number")

    # libfm: every feature is `id:1`
    if schema.format == "libfm":
        for col in schema.categorical:
            raw = columns[col.column]
            if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
                ok = np.asarray(pc.fill_null(pc.match_substring_regex(raw, r"^[^:]+(:1(\.0*)?)?$"), False))
                flag(~ok, lambda i, raw=raw, name=col.name: f"field {name!r}: libfm feature {_show(raw, i)}: expected `id:1`")
                columns[col.column] = pc.replace_substring_regex(raw, r":.*$", "")

    if bad.any():
        if on_bad_rows == "error":
            first = int(np.flatnonzero(bad)[0])
            reason = next(r for mask, r in reasons if mask[first])
            raise DataError(f"{path}:{lines[first]}: {reason(first)} (use --on-bad-rows skip to skip bad rows)")
        for mask, reason in reasons:
            for i in np.flatnonzero(mask):
                stats.skip(int(lines[i]), reason(int(i)))
        keep = ~bad
        keep_arrow = pa.array(keep)
        columns = {k: pc.filter(v, keep_arrow) for k, v in columns.items()}
        lines, labels = lines[keep], labels[keep]
    stats.rows_kept += len(lines)
    return RawChunk(columns, lines, labels.astype(np.float32))


def _is_null(array: pa.Array) -> np.ndarray:
    """Missing values: null, or NaN in a float column (Parquet's usual missing marker)."""
    missing = np.asarray(array.is_null(), dtype=bool)
    if pa.types.is_floating(array.type):
        missing |= np.asarray(pc.fill_null(pc.is_nan(array), False), dtype=bool)
    return missing


def _as_float(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN where missing or invalid, mask of valid numbers)."""
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        try:  # fast path: every present value parses
            values = np.asarray(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
            ok = np.isfinite(values)
            if ok.sum() + array.null_count == len(array):
                return values, ok
        except pa.ArrowInvalid:
            pass
        ok = np.asarray(pc.fill_null(pc.match_substring_regex(array, _NUMBER), False), dtype=bool)
        cleaned = pc.if_else(pa.array(ok), array, pa.scalar(None, pa.string()))
        values = pc.cast(pc.utf8_trim_whitespace(cleaned), pa.float64())
    else:
        values = pc.cast(array, pa.float64())
    values = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return values, np.isfinite(values)


def _show(array: pa.Array, index: int) -> str:
    value = array[index].as_py()
    return repr(value)


def as_float(array: pa.Array, fill: float) -> np.ndarray:
    """Numeric column as float64, missing values replaced by ``fill`` (rows already validated)."""
    values, ok = _as_float(array)
    return np.where(ok, values, fill)


def as_string(array: pa.Array) -> pa.Array:
    """Any column as strings; missing values become the empty string."""
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = pc.cast(array, pa.string())
    return pc.fill_null(array, "")
