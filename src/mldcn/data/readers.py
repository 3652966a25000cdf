"""Streaming readers for CSV/TSV (optionally compressed), libfm and Parquet click logs.

A reader yields :class:`RawChunk` s: the columns a schema needs, as Arrow arrays,
with the file line (or Parquet row) number of every row, after validating each
row. A bad row (wrong column count, text that is not UTF-8, missing or
non-binary label, a numeric field that is not a number or is infinite, libfm
feature that is not ``id:1``) either raises a :class:`DataError` naming file,
line and field, or, with ``on_bad_rows="skip"``, is dropped and recorded in
:class:`ReadStats` — rows read = rows kept + rows skipped, always.

Missing values: an empty CSV field, a Parquet null, and in a numeric field (or
the label) a NaN — the Parquet float NaN or the text ``nan`` in any letter case.
A missing number is filled with its column's ``fill``; a missing label makes the
row bad. ``inf``, ``-Infinity`` or a number too large for float64 is never valid.

Parsing and validation are vectorised (Arrow C++ kernels); memory is bounded by
the chunk size, so a file larger than memory streams. CSV text is read as bytes
and checked for UTF-8 here, so that bad text is a bad row with its line rather
than an error inside Arrow's parser.

Parallel preparation reads a file in parts (:class:`FilePart`): a byte range of
whole lines of an uncompressed CSV/TSV/libfm file, or a run of Parquet row
groups. :func:`plan_parts` cuts a file (at line ends, a function of the file
alone), :func:`count_line_ends` gives each range's first line number, and
``read_chunks(..., part=...)`` reads one part with the same checks, the same
line numbers and the same messages as a read of the whole file. A line ends at
``\n``, ``\r\n`` or a lone ``\r`` (as Arrow's parser reads it); like the reader
of a whole file, a part assumes values do not contain line breaks.
"""

from __future__ import annotations

import bisect
import io
import re
import threading
import weakref
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
_SCAN_BYTES = 1 << 20  # block size of the scans for line ends

# what Arrow's string -> float cast reads, with surrounding blanks: decimals, nan, inf, infinity
_NUMBER = r"(?i)^\s*[-+]?((\d+\.?\d*|\.\d+)(e[-+]?\d+)?|nan|inf|infinity)\s*$"
_RELEASE_SECONDS = 30.0  # longest wait for Arrow to free a CSV reader (normally well under 1 ms)


class DataError(ValueError):
    """Bad input data. The message names the file, the line and the field."""


@dataclass
class BadRow:
    line: int
    reason: str


@dataclass
class ReadStats:
    """Row accounting of one input file (or part): ``rows_read == rows_kept + rows_skipped``.

    ``examples`` are the skipped rows with the smallest line numbers (at most
    ``MAX_BAD_ROW_EXAMPLES``, in line order): a function of the rows, not of the
    order in which chunks or parts were read, so the stats of a file's parts
    :meth:`merge` into exactly the stats of one read of the whole file.
    """

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_skipped: int = 0
    examples: list[BadRow] = field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        self.rows_skipped += 1
        self._note(BadRow(int(line), reason))

    def _note(self, bad: BadRow) -> None:
        if len(self.examples) == MAX_BAD_ROW_EXAMPLES and bad.line >= self.examples[-1].line:
            return
        bisect.insort(self.examples, bad, key=lambda b: b.line)
        del self.examples[MAX_BAD_ROW_EXAMPLES:]

    def merge(self, other: "ReadStats") -> None:
        """Add the counts and examples of ``other`` (another part of the same file)."""
        self.rows_read += other.rows_read
        self.rows_kept += other.rows_kept
        self.rows_skipped += other.rows_skipped
        for bad in other.examples:
            self._note(bad)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": self.rows_skipped,
            "skipped_examples": [{"line": b.line, "reason": b.reason} for b in self.examples],
        }


@dataclass(frozen=True)
class FilePart:
    """A part of one input file that is read on its own (a unit of parallel preparation).

    CSV/TSV/libfm: the bytes ``[start, stop)``, whole lines, the first of which is
    line ``first_line`` of the file (the header, if any, is never in a part: its
    column names are read from the file's first line). Parquet: the row groups
    ``[start, stop)``, whose first row is row ``first_line`` (from 1).
    """

    start: int
    stop: int
    first_line: int


@dataclass
class RawChunk:
    """Validated rows: ``columns[name]`` are Arrow arrays; ``lines`` their line numbers."""

    columns: dict[str, pa.Array]
    lines: np.ndarray
    labels: np.ndarray  # float32 [n, T] in {0, 1}, one column per label (NaN when read with require_label=False)
    weights: np.ndarray | None = None  # float32 [n] >= 0, the schema's weight column (None without one)

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
    part: FilePart | None = None,
) -> Iterator[RawChunk]:
    """Validated chunks of ``path`` under ``schema``; ``stats`` accumulates the row counts.

    ``extra_columns`` are read too (e.g. the time column of a time split). With
    ``require_label=False`` (rows to predict) the label column is neither read nor
    checked and may be absent; the chunks' ``label`` is then NaN. With ``part``
    only that part of the file is read (see :func:`plan_parts`), with the file's
    line numbers.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats(str(path))
    if not path.exists():
        raise DataError(f"{path}: file not found")
    columns = schema.raw_columns() if require_label else _feature_columns(schema)
    needed = columns + [c for c in extra_columns if c not in columns]
    if schema.format == "parquet":
        batches = _parquet_batches(path, needed, part)
    else:
        batches = _csv_batches(path, schema, needed, stats, chunk_bytes, on_bad_rows, part)
    rows_before = stats.rows_read
    try:
        for columns, lines in batches:
            if schema.format == "parquet":
                stats.rows_read += len(lines)
            chunk = _validate(path, schema, columns, lines, stats, on_bad_rows, require_label)
            if len(chunk):
                yield chunk
    finally:
        batches.close()  # frees the file reader now, before an error goes on (see _csv_batches)
    if stats.rows_read == rows_before:
        raise DataError(f"{path}: no data rows (the file is empty)")


def _feature_columns(schema: DataSchema) -> list[str]:
    """The raw columns the features read, each once (no label column: a label is never a feature)."""
    columns: list[str] = []
    for col in (*schema.categorical, *schema.numeric, *schema.sequence):
        if col.column not in columns:
            columns.append(col.column)
    return columns


class _RejectedRows:
    """The CSV parser's ``invalid_row_handler``: notes each row it rejects (line → reason), skips it."""

    def __init__(self, path: Path, delimiter: str, names: list[str] | None, line_offset: int = 0) -> None:
        self.path, self.delimiter, self.names = path, delimiter, names
        self.line_offset = line_offset  # the file line of the stream's row n is n + line_offset
        self.lines: dict[int, str] = {}  # rows rejected that no batch claimed yet

    def __call__(self, row: pcsv.InvalidRow) -> str:
        what = "an empty line" if not (row.text or "").strip() else f"{row.actual_columns}"
        reason = f"expected {row.expected_columns} columns, found {what}"
        if 0 < row.actual_columns < row.expected_columns:
            self.names = self.names or _header_names(self.path, self.delimiter)
            if row.actual_columns < len(self.names):
                reason += f" (no value for field {self.names[row.actual_columns]!r})"
        self.lines[row.number + self.line_offset] = reason
        return "skip"


def _csv_batches(
    path: Path,
    schema: DataSchema,
    needed: list[str],
    stats: ReadStats,
    chunk_bytes: int,
    on_bad_rows: OnBadRows = "error",
    part: FilePart | None = None,
) -> Iterator[tuple[dict[str, pa.Array], np.ndarray]]:
    """CSV/TSV/libfm record batches as binary columns, with line numbers; bad rows go to stats.

    With ``part``, the part's bytes are parsed as a file without header (the
    column names are those of the file's header line) whose line 1 is the part's
    ``first_line``.

    Values are read as bytes (``_validate`` checks that they are UTF-8) and only an
    empty field is null: Arrow's own null spellings (``NA``, ``NULL``, ``nan``, ...)
    stay text. The parser reports the rows it rejects (wrong column count) while it
    parses, which runs a block ahead of the batches it returns: a rejected row is
    matched to a batch by its line number, never by when it was reported.

    Arrow may free the reader on one of its I/O threads, and freeing it releases
    the Python row handler, which takes the GIL: during interpreter shutdown that
    aborts the process (``terminate called without an active exception``, exit
    134). So, however the reading ends, the reader is freed here and this waits
    until Arrow has let go of the handler.
    """
    libfm = schema.format == "libfm"
    if libfm:
        names = [schema.labels[0].column] + [c.column for c in schema.categorical]
        header, delimiter = False, " "
    else:
        names = list(schema.column_names) if not schema.header else None
        header, delimiter = schema.header, schema.delimiter
    line_offset = 0
    if part is not None:
        if header:
            names = _header_columns(path, delimiter)
        header, line_offset = False, part.first_line - 1
    handler = _RejectedRows(path, delimiter, names, line_offset)
    rejected = handler.lines
    released = threading.Event()
    weakref.finalize(handler, released.set).atexit = False

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

    reader = None
    try:
        try:
            if part is None:
                source = pa.input_stream(str(path), compression="detect")
            else:
                source = pa.PythonFile(_ByteRange(path, part.start, part.stop), mode="r")
            reader = pcsv.open_csv(
                source,
                read_options=pcsv.ReadOptions(
                    use_threads=False,
                    block_size=chunk_bytes,
                    column_names=names,
                    autogenerate_column_names=False,
                ),
                parse_options=pcsv.ParseOptions(
                    delimiter=delimiter, invalid_row_handler=handler, ignore_empty_lines=False
                ),
                convert_options=pcsv.ConvertOptions(
                    include_columns=needed,
                    column_types={c: pa.binary() for c in needed},
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as error:
            raise _reader_error(path, error, needed, line_offset=line_offset) from None

        next_line = 2 if header else 1 + line_offset
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as error:
                raise _reader_error(path, error, needed, after_line=next_line - 1, line_offset=line_offset) from None
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
    finally:
        reader = handler = source = None
        released.wait(_RELEASE_SECONDS)


def _header_names(path: Path, delimiter: str) -> list[str]:
    """The column names on the first line of a CSV (best effort, for error messages)."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            head = stream.read(1 << 16)
    except (pa.ArrowInvalid, OSError):
        return []
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    return [name.strip('"') for name in first.split(delimiter)]


# ---------------------------------------------------------------------------- parts of a file


def plan_parts(path: str | Path, schema: DataSchema, part_bytes: int) -> list[tuple[int, int]] | None:
    """Where to cut ``path`` into parts of about ``part_bytes`` each; None: read it whole.

    CSV/TSV/libfm: byte ranges ``(start, stop)`` of whole lines, cut after the
    first ``\n`` at or past each multiple of ``part_bytes`` (after the header
    line, if any); a compressed file cannot be cut. Parquet: runs of row groups
    ``(first, stop)`` of about ``part_bytes`` uncompressed. A function of the
    file's bytes and ``part_bytes`` only. The first line of each range comes
    from :func:`count_line_ends` (Parquet: the row counts in the file's footer,
    see :func:`parquet_part_rows`).
    """
    path = Path(path)
    if schema.format == "parquet":
        try:
            metadata = pq.ParquetFile(str(path)).metadata
        except (pa.ArrowInvalid, OSError):
            return None  # read whole: the reader says what is wrong with it
        ranges, first, size = [], 0, 0
        for group in range(metadata.num_row_groups):
            size += metadata.row_group(group).total_byte_size
            if size >= part_bytes:
                ranges.append((first, group + 1))
                first, size = group + 1, 0
        if first < metadata.num_row_groups:
            ranges.append((first, metadata.num_row_groups))
        return ranges if len(ranges) > 1 else None
    if _compressed(path):
        return None
    size = path.stat().st_size
    start = _body_start(path) if schema.header and schema.format == "csv" else 0
    ranges = []
    with open(path, "rb") as file:
        while size - start > part_bytes:
            cut = _next_line_start(file, start + part_bytes, size)
            if cut >= size:
                break
            ranges.append((start, cut))
            start = cut
    ranges.append((start, size))
    return ranges if len(ranges) > 1 else None


def parquet_part_rows(path: str | Path, first: int, stop: int) -> int:
    """The number of rows in row groups ``[first, stop)`` of a Parquet file."""
    metadata = pq.ParquetFile(str(path)).metadata
    return sum(metadata.row_group(g).num_rows for g in range(first, stop))


def count_line_ends(path: str | Path, start: int, stop: int) -> tuple[int, bool]:
    """(line ends in bytes ``[start, stop)``, whether the range ends with one).

    A line ends at ``\n``, at ``\r\n`` (one end) or at a lone ``\r``, as Arrow's
    CSV parser reads lines. Reads blocks of ``_SCAN_BYTES``: memory stays flat.
    """
    ends, previous = 0, b""
    with open(path, "rb") as file:
        file.seek(start)
        left = stop - start
        while left > 0:
            block = file.read(min(_SCAN_BYTES, left))
            if not block:
                break
            left -= len(block)
            ends += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
            if previous == b"\r" and block[:1] == b"\n":
                ends -= 1  # a \r\n split across two blocks is one line end
            previous = block[-1:]
    return ends, previous in (b"\n", b"\r")


def _compressed(path: Path) -> bool:
    """Whether Arrow's ``compression="detect"`` decompresses ``path`` (by its extension)."""
    try:
        pa.Codec.detect(str(path))
    except (TypeError, ValueError, pa.ArrowNotImplementedError):
        return False
    return True


def _body_start(path: Path) -> int:
    """The offset just after the first line (the header) of a text file."""
    offset = 0
    with open(path, "rb") as file:
        while True:
            block = file.read(_SCAN_BYTES)
            if not block:
                return offset
            ends = [i for i in (block.find(b"\n"), block.find(b"\r")) if i >= 0]
            if ends:
                end = min(ends)
                if block[end : end + 2] == b"\r\n":
                    return offset + end + 2
                if block[end:end + 1] == b"\r" and end + 1 == len(block):  # is a \n next, in the next block?
                    file.seek(offset + end + 1)
                    return offset + end + 1 + (file.read(1) == b"\n")
                return offset + end + 1
            offset += len(block)


def _next_line_start(file, position: int, size: int) -> int:
    """The offset just after the first ``\n`` at or after ``position`` (``size`` if none)."""
    file.seek(position)
    while position < size:
        block = file.read(_SCAN_BYTES)
        if not block:
            break
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(block)
    return size


def _header_columns(path: Path, delimiter: str) -> list[str]:
    """The column names on a CSV file's header line, as Arrow's reader of the whole file reads them."""
    with open(path, "rb") as file:
        first = file.read(_body_start(path))
    try:
        return pcsv.read_csv(
            pa.BufferReader(first),
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter),
        ).column_names
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: cannot read the header line ({error})") from None


class _ByteRange(io.RawIOBase):
    """The bytes ``[start, stop)`` of a file as a stream (what the CSV reader of a part parses)."""

    def __init__(self, path: Path, start: int, stop: int) -> None:
        self.file = open(path, "rb")  # noqa: SIM115  (closed by close())
        self.file.seek(start)
        self.position, self.left = 0, stop - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        if n <= 0:
            return 0
        got = self.file.readinto(memoryview(buffer)[:n])
        self.left -= got
        self.position += got
        return got

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.file.close()
        super().close()


def _parquet_batches(
    path: Path, needed: list[str], part: FilePart | None = None
) -> Iterator[tuple[dict[str, pa.Array], np.ndarray]]:
    try:
        file = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    try:
        missing = [c for c in needed if c not in file.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the file has {file.schema_arrow.names}")
        row = 1 if part is None else part.first_line
        groups = None if part is None else list(range(part.start, part.stop))
        for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups, columns=needed):
            lines = np.arange(row, row + batch.num_rows, dtype=np.int64)
            row += batch.num_rows
            yield {name: batch.column(name) for name in needed}, lines
    finally:
        file.close()


def _reader_error(
    path: Path, error: Exception, needed: list[str], after_line: int | None = None, line_offset: int = 0
) -> DataError:
    """The DataError for an error inside Arrow's CSV reader (whose row n is file line n + ``line_offset``)."""
    text = str(error)
    unhandled = re.search(r"Row #(\d+): Expected (\d+) columns, got (\d+)", text)
    if unhandled:  # the row handler never saw this row: pyarrow could not decode its text to pass it on
        row, expected, found = unhandled.groups()
        line = int(row) + line_offset
        return DataError(
            f"{path}:{line}: expected {expected} columns, found {found}, in text that is not UTF-8: "
            "the CSV reader stops at such a row even with --on-bad-rows skip; correct it in the file"
        )
    where = "" if after_line is None else f" (after line {after_line})"
    return DataError(f"{path}: {_explain(error, needed)}{where}")


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
    """Check text, label, numeric fields and libfm values; drop or raise on bad rows."""
    n = len(lines)
    bad = np.zeros(n, dtype=bool)
    reasons: list[tuple[np.ndarray, str]] = []

    def flag(mask: np.ndarray, reason) -> None:
        mask = mask & ~bad
        if mask.any():
            reasons.append((mask.copy(), reason))
            bad[:] |= mask

    # text: bytes (every CSV column, a Parquet binary column) must be UTF-8
    for name, raw in list(columns.items()):
        if pa.types.is_binary(raw.type) or pa.types.is_large_binary(raw.type):
            columns[name], not_utf8 = _as_text(raw)
            reason = lambda i, name=name, raw=raw: f"field {name!r}: not valid UTF-8 text ({_utf8_problem(raw[i].as_py())})"  # noqa: E731
            flag(not_utf8, reason)

    # labels: one column per task, each by its rule
    if require_label:
        labels = np.zeros((n, len(schema.labels)), dtype=np.float64)
        for t, spec in enumerate(schema.labels):
            raw = columns[spec.column]
            field_name = f"field {spec.column!r}"
            if spec.is_text_rule:  # any present value is valid: it matches or it does not
                text = raw if pa.types.is_string(raw.type) else pc.cast(raw, pa.string())
                flag(np.asarray(text.is_null(), dtype=bool), lambda i, f=field_name, spec=spec: f"{f}: missing label {spec.name!r}")
                allowed = pa.array([spec.equals] if spec.equals is not None else list(spec.in_), pa.string())
                labels[:, t] = np.asarray(pc.fill_null(pc.is_in(text, value_set=allowed), False))
                continue
            value, missing, not_number = _parse_numbers(raw)
            flag(missing, lambda i, f=field_name, spec=spec: f"{f}: missing label {spec.name!r}")
            flag(not_number, lambda i, f=field_name, raw=raw: f"{f}: label {_show(raw, i)} is not a number")
            flag(np.isinf(value), lambda i, f=field_name, raw=raw: f"{f}: label {_show(raw, i)} is not a finite number")
            if spec.threshold is None:
                binary = (value == 0) | (value == 1)
                flag(~binary & np.isfinite(value), lambda i, f=field_name, raw=raw: f"{f}: label must be 0 or 1, got {_show(raw, i)}")
                labels[:, t] = np.where(binary, value, 0.0)
            else:
                labels[:, t] = np.where(np.isfinite(value), value > spec.threshold, 0.0)
    else:
        labels = np.full((n, len(schema.labels)), np.nan)

    # the row weights, read with the labels: a number >= 0
    weights = None
    if require_label and schema.weight is not None:
        raw = columns[schema.weight]
        weights, missing, not_number = _parse_numbers(raw)
        name = schema.weight
        flag(missing, lambda i, name=name: f"field {name!r}: missing weight")
        flag(not_number, lambda i, name=name, raw=raw: f"field {name!r}: weight {_show(raw, i)} is not a number")
        flag(~np.isfinite(weights) & ~missing & ~not_number | (weights < 0), lambda i, name=name, raw=raw: f"field {name!r}: weight {_show(raw, i)} must be a finite number >= 0")

    # numeric sources: a number or missing (NaN included), never infinite
    numeric_sources = {c.column for c in schema.numeric}
    numeric_sources |= {c.column for c in schema.categorical if c.derive in ("log_square_bucket", "bucketize")}
    for name in sorted(numeric_sources):
        raw = columns[name]
        values, _, not_number = _parse_numbers(raw)
        flag(not_number, lambda i, name=name, raw=raw: f"field {name!r}: {_show(raw, i)} is not a number")
        flag(np.isinf(values), lambda i, name=name, raw=raw: f"field {name!r}: {_show(raw, i)} is not a finite number")

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
        skipped = sorted(((int(i), reason) for mask, reason in reasons for i in np.flatnonzero(mask)), key=lambda t: t[0])
        for i, reason in skipped:  # in line order within the chunk
            stats.skip(int(lines[i]), reason(i))
        keep = ~bad
        keep_arrow = pa.array(keep)
        columns = {k: pc.filter(v, keep_arrow) for k, v in columns.items()}
        lines, labels = lines[keep], labels[keep]
        weights = None if weights is None else weights[keep]
    stats.rows_kept += len(lines)
    return RawChunk(columns, lines, labels.astype(np.float32), None if weights is None else weights.astype(np.float32))


def _as_text(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A binary column as strings, and the mask of values that are not UTF-8 (null in the strings)."""
    text = pa.large_string() if pa.types.is_large_binary(array.type) else pa.string()
    try:  # fast path: the cast checks UTF-8 in C++
        return pc.cast(array, text), np.zeros(len(array), dtype=bool)
    except pa.ArrowInvalid:
        pass
    # some value is not UTF-8: find which (in Python, only for such a chunk)
    not_utf8 = np.array([v is not None and _utf8_problem(v) is not None for v in array.to_pylist()], dtype=bool)
    valid = pc.if_else(pa.array(not_utf8), pa.scalar(None, array.type), array)
    return pc.cast(valid, text), not_utf8


def _utf8_problem(value: bytes) -> str | None:
    """Where ``value`` stops being UTF-8 (None when it is UTF-8)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as error:
        shown = f"{value[:40]!r}{'...' if len(value) > 40 else ''}"
        return f"byte 0x{value[error.start]:02x} at position {error.start} of {shown}"
    return None


def _parse_numbers(array: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values as float64, missing, not a number) of a numeric column.

    Missing: null, a float NaN, or text that reads as NaN (``nan`` in any letter
    case, blanks around it allowed). ``values`` is NaN where missing or not a
    number and keeps ±inf (from a float column, text such as ``inf`` or
    ``-Infinity``, or a number too large for float64) for the caller to reject.
    """
    not_number = np.zeros(len(array), dtype=bool)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        try:  # fast path: every present value parses
            numbers = pc.cast(array, pa.float64())
        except pa.ArrowInvalid:
            number = np.asarray(pc.fill_null(pc.match_substring_regex(array, _NUMBER), False), dtype=bool)
            not_number = ~number & np.asarray(array.is_valid(), dtype=bool)
            kept = pc.if_else(pa.array(number), pc.utf8_trim_whitespace(array), pa.scalar(None, array.type))
            numbers = pc.cast(kept, pa.float64())
    else:
        numbers = pc.cast(array, pa.float64())
    values = np.asarray(numbers.to_numpy(zero_copy_only=False), dtype=np.float64)  # null -> NaN
    return values, np.isnan(values) & ~not_number, not_number


def _show(array: pa.Array, index: int) -> str:
    value = array[index].as_py()
    return repr(value)


def as_float(array: pa.Array, fill: float) -> np.ndarray:
    """Numeric column as float64, missing values replaced by ``fill`` (rows already validated)."""
    values, _, _ = _parse_numbers(array)
    return np.where(np.isfinite(values), values, fill)


def as_string(array: pa.Array) -> pa.Array:
    """Any column as strings; missing values become the empty string."""
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = pc.cast(array, pa.string())
    return pc.fill_null(array, "")
