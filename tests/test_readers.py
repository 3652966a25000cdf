"""Bad input: every bad row names its file, line and field, or is skipped and counted.

Line numbers are file lines: with a header the first data row is line 2, without
one (libfm, headerless TSV) it is line 1. Each case writes a tiny file into
``tmp_path`` and reads it twice: with the default ``on_bad_rows="error"`` (a
:class:`DataError` naming path, line and field) and with ``"skip"`` (the bad row
is dropped, counted and listed with its line and reason, and
``rows_read == rows_kept + rows_skipped``). In a case's text, ``\\udcXX`` stands for
the raw byte 0xXX (written with ``surrogateescape``): bytes that are not UTF-8.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldcn.data.readers import DataError, ReadStats, as_float, read_chunks
from mldcn.data.schema import schema_from_dict

# label, one categorical, one numeric: three columns
CSV = schema_from_dict(
    {"name": "tiny", "label": {"name": "label"}, "categorical": [{"name": "c"}], "numeric": [{"name": "x"}]}
)
# label is a rating, click = rating > 3
RATED = schema_from_dict(
    {"name": "rated", "label": {"name": "rating", "threshold": 3}, "categorical": [{"name": "c"}]}
)
# label -1/1 and three one-hot features f0 f1 f2
LIBFM = schema_from_dict(
    {
        "name": "tiny_libfm",
        "format": "libfm",
        "label": {"name": "label", "threshold": 0},
        "categorical": [{"name": "f0"}, {"name": "f1"}, {"name": "f2"}],
    }
)
# the CSV schema's columns in a Parquet file (line numbers are row numbers from 1)
PARQUET = schema_from_dict(
    {
        "name": "tiny_parquet",
        "format": "parquet",
        "label": {"name": "label"},
        "categorical": [{"name": "c"}],
        "numeric": [{"name": "x"}],
    }
)
GOOD_CSV = ["1,a,2", "0,b,3", "1,c,4", "0,d,5"]
GOOD_RATED = ["1,a", "4,b", "5,c", "2,d"]
GOOD_LIBFM = ["1 1:1 5:1 9:1", "-1 2:1 6:1 9:1", "1 3:1 7:1 9:1", "-1 4:1 8:1 9:1"]


def write(path: Path, lines: list[str]) -> Path:
    """One line each; ``\\udcXX`` in a line is written as the raw byte 0xXX."""
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
    return path


def read(path: Path, schema=CSV, on_bad_rows="error", chunk_bytes: int = 1 << 20):
    """(kept line numbers, stats, chunks) of reading ``path``."""
    stats = ReadStats(str(path))
    chunks = list(read_chunks(path, schema, on_bad_rows, stats, chunk_bytes))
    lines = [int(line) for chunk in chunks for line in chunk.lines]
    return lines, stats, chunks


def column(chunks, name: str) -> list:
    return [value for chunk in chunks for value in chunk.columns[name].to_pylist()]


def assert_accounted(stats: ReadStats) -> None:
    assert stats.rows_read == stats.rows_kept + stats.rows_skipped


@dataclass(frozen=True)
class BadCase:
    """A file whose line ``bad_line`` is bad; the error must contain ``field`` and ``reason``."""

    schema: object
    lines: tuple[str, ...]
    bad_line: int
    field: str | None  # None: the row has no single bad field (too many columns)
    reason: str
    header: bool = True


def csv_case(bad_row: str, field: str | None, reason: str) -> BadCase:
    # header = line 1, good rows = lines 2 and 3, the bad row = line 4, good rows = lines 5 and 6
    return BadCase(CSV, ("label,c,x", *GOOD_CSV[:2], bad_row, *GOOD_CSV[2:]), 4, field, reason)


def rated_case(bad_row: str, field: str | None, reason: str) -> BadCase:
    return BadCase(RATED, ("rating,c", *GOOD_RATED[:2], bad_row, *GOOD_RATED[2:]), 4, field, reason)


def libfm_case(bad_row: str, field: str | None, reason: str) -> BadCase:
    # no header: the bad row is line 3
    return BadCase(LIBFM, (*GOOD_LIBFM[:2], bad_row, *GOOD_LIBFM[2:]), 3, field, reason, header=False)


BAD_CASES = {
    "too_few_columns": csv_case("0,e", "x", "expected 3 columns, found 2"),
    "too_many_columns": csv_case("0,e,6,7", None, "expected 3 columns, found 4"),
    "empty_line": csv_case("", "label", "missing label"),
    "non_numeric_value": csv_case("0,e,abc", "x", "'abc' is not a number"),
    "missing_label": csv_case(",e,6", "label", "missing label"),
    "label_2": csv_case("2,e,6", "label", "label must be 0 or 1, got '2'"),
    "label_yes": csv_case("yes,e,6", "label", "label 'yes' is not a number"),
    "threshold_label_text": rated_case("high,e", "rating", "label 'high' is not a number"),
    "threshold_label_missing": rated_case(",e", "rating", "missing label"),
    "threshold_too_few_columns": rated_case("4", "c", "expected 2 columns, found 1"),
    "libfm_value_not_1": libfm_case("1 3:1 7:2 9:1", "f1", "'7:2': expected `id:1`"),
    "libfm_value_not_number": libfm_case("1 3:x 7:1 9:1", "f0", "'3:x': expected `id:1`"),
    "libfm_too_few_features": libfm_case("1 3:1 7:1", "f2", "expected 4 columns, found 3"),
    "libfm_too_many_features": libfm_case("1 3:1 7:1 9:1 11:1", None, "expected 4 columns, found 5"),
    "libfm_label_text": libfm_case("click 3:1 7:1 9:1", "label", "label 'click' is not a number"),
    # bytes that are not UTF-8 (0xe9 is Latin-1 "é") are a bad row, not a reader error
    "not_utf8_categorical": csv_case("0,caf\udce9,6", "c", "not valid UTF-8 text (byte 0xe9 at position 3 of b'caf\\xe9')"),
    "not_utf8_numeric": csv_case("0,e,6\udcff", "x", "not valid UTF-8 text (byte 0xff at position 1"),
    "not_utf8_label": csv_case("\udcc31,e,6", "label", "not valid UTF-8 text"),
    "not_utf8_threshold_label": rated_case("4,\udce9t\udce9", "c", "not valid UTF-8 text"),
    "not_utf8_libfm": libfm_case("1 3:1 7\udce9:1 9:1", "f1", "not valid UTF-8 text"),
    # NaN is a missing value (a missing label is bad); an infinity is never valid
    "nan_label": csv_case("nan,e,6", "label", "missing label"),
    "infinite_value": csv_case("0,e,inf", "x", "'inf' is not a finite number"),
    "minus_infinity_value": csv_case("0,e,-Infinity", "x", "'-Infinity' is not a finite number"),
    "overflowing_value": csv_case("0,e,1e400", "x", "'1e400' is not a finite number"),
    "infinite_label": csv_case("inf,e,6", "label", "label 'inf' is not a finite number"),
    "threshold_label_nan": rated_case("NaN,e", "rating", "missing label"),
    "threshold_label_infinite": rated_case("Infinity,e", "rating", "label 'Infinity' is not a finite number"),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_row_raises_with_path_line_and_field(tmp_path, name):
    case = BAD_CASES[name]
    path = write(tmp_path / f"{name}.txt", list(case.lines))
    with pytest.raises(DataError) as error:
        read(path, case.schema)
    message = str(error.value)
    assert message.startswith(f"{path}:{case.bad_line}: "), message
    assert case.reason in message
    if case.field is not None:
        assert f"field {case.field!r}" in message
    assert "--on-bad-rows skip" in message  # says how to go on


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_row_is_skipped_counted_and_listed(tmp_path, name):
    case = BAD_CASES[name]
    path = write(tmp_path / f"{name}.txt", list(case.lines))
    lines, stats, chunks = read(path, case.schema, "skip")
    first = 2 if case.header else 1
    expected = [n for n in range(first, first + len(case.lines) - case.header) if n != case.bad_line]
    assert lines == expected
    assert (stats.rows_read, stats.rows_kept, stats.rows_skipped) == (5, 4, 1)
    assert_accounted(stats)
    assert [b.line for b in stats.examples] == [case.bad_line]
    assert case.reason in stats.examples[0].reason
    if case.field is not None:
        assert f"field {case.field!r}" in stats.examples[0].reason
    # the kept rows are the good ones, in order
    if case.header:
        assert column(chunks, "c") == ["a", "b", "c", "d"]
    else:
        assert column(chunks, "f0") == ["1", "2", "3", "4"]  # `id:1` becomes `id`


def test_labels_are_binary_floats(tmp_path):
    csv = write(tmp_path / "a.csv", ["label,c,x", *GOOD_CSV])
    rated = write(tmp_path / "r.csv", ["rating,c", "1,a", "3,b", "3.5,c", "5,d"])
    libfm = write(tmp_path / "a.libfm", GOOD_LIBFM)
    for path, schema, expected in [
        (csv, CSV, [1, 0, 1, 0]),
        (rated, RATED, [0, 0, 1, 1]),  # rating > 3 is a click; 3 is not
        (libfm, LIBFM, [1, 0, 1, 0]),  # libfm's -1/1 with threshold 0
    ]:
        _, _, chunks = read(path, schema)
        label = np.concatenate([c.labels for c in chunks])
        assert label.dtype == np.float32 and label.shape == (len(expected), 1)
        np.testing.assert_array_equal(label[:, 0], expected)


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("content", ["", "label,c,x\n", "label,c,x"], ids=["zero_bytes", "header_only", "header_no_newline"])
def test_empty_file_is_an_error_in_both_modes(tmp_path, mode, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match="no data rows") as error:
        read(path, on_bad_rows=mode)
    assert str(path) in str(error.value)


def test_file_of_only_bad_rows_is_not_empty_and_is_accounted(tmp_path):
    path = write(tmp_path / "bad.csv", ["label,c,x", "2,a,1", "0,b,zz"])
    lines, stats, chunks = read(path, on_bad_rows="skip")
    assert lines == [] and chunks == []
    assert (stats.rows_read, stats.rows_kept, stats.rows_skipped) == (2, 0, 2)
    assert [b.line for b in stats.examples] == [2, 3]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as error:
        read(tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in str(error.value)


def test_schema_column_missing_from_header(tmp_path):
    path = write(tmp_path / "no_x.csv", ["label,c,y", "1,a,2"])
    for mode in ("error", "skip"):
        with pytest.raises(DataError) as error:
            read(path, on_bad_rows=mode)
        message = str(error.value)
        assert message.startswith(f"{path}: ")
        assert "missing" in message and "'x'" in message


# ---------------------------------------------------------------------------- compressed files


def many_rows(n: int) -> list[str]:
    """Header plus ``n`` rows; row at line L has categorical value ``vL``."""
    return ["label,c,x"] + [f"{line % 2},v{line},{line * 0.5}" for line in range(2, n + 2)]


@pytest.mark.parametrize("chunk_bytes", [256, 1 << 20])
def test_gzip_reads_identically_to_plain(tmp_path, chunk_bytes):
    rows = many_rows(300)
    rows[10] = "1,v11"  # line 11: too few columns
    rows[50] = "7,v51,1"  # line 51: bad label
    plain = write(tmp_path / "rows.csv", rows)
    packed = tmp_path / "rows.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a_lines, a_stats, a_chunks = read(plain, on_bad_rows="skip", chunk_bytes=chunk_bytes)
    b_lines, b_stats, b_chunks = read(packed, on_bad_rows="skip", chunk_bytes=chunk_bytes)
    assert a_lines == b_lines
    assert len(a_lines) == 298
    for name in ("label", "c", "x"):
        assert column(a_chunks, name) == column(b_chunks, name)
    assert [(b.line, b.reason) for b in a_stats.examples] == [(b.line, b.reason) for b in b_stats.examples]
    assert [b.line for b in b_stats.examples] == [11, 51]
    assert (b_stats.rows_read, b_stats.rows_kept, b_stats.rows_skipped) == (300, 298, 2)
    # and the error mode reports the same first bad line
    with pytest.raises(DataError, match=re.escape(f"{packed}:11: ")):
        read(packed, chunk_bytes=chunk_bytes)


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("chunk_bytes", [256, 1 << 20])
def test_truncated_gzip_names_file_and_says_truncated(tmp_path, mode, chunk_bytes):
    data = gzip.compress("\n".join(many_rows(5000)).encode() + b"\n")
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as error:
        read(path, on_bad_rows=mode, chunk_bytes=chunk_bytes)
    message = str(error.value)
    assert str(path) in message
    assert "truncated" in message or "corrupt" in message


# ---------------------------------------------------------------------------- line numbers


def mixed_file(path: Path) -> tuple[Path, dict[int, str]]:
    """100 data rows (lines 2..101) with bad rows of every kind; {bad line: reason}.

    Fewer than 20 bad rows, so ``ReadStats.examples`` lists them all.
    """
    bad = {
        5: "expected 3 columns, found 2",
        9: "expected 3 columns, found 4",
        10: "missing label",  # empty line
        23: "'q' is not a number",
        24: "expected 3 columns, found 2",
        47: "label must be 0 or 1",
        48: "label must be 0 or 1",
        63: "expected 3 columns, found 5",
        64: "missing label",
        88: "label 'no' is not a number",
        101: "expected 3 columns, found 2",  # the last line
    }
    rows = many_rows(100)
    text = {
        5: "1,v5",
        9: "1,v9,1,1",
        10: "",
        23: "1,v23,q",
        24: "1,v24",
        47: "2,v47,1",
        48: "-1,v48,1",
        63: "0,v63,2,,",
        64: ",v64,3",
        88: "no,v88,1",
        101: "0,v101",
    }
    for line, row in text.items():
        rows[line - 1] = row
    return write(path, rows), bad


@pytest.mark.parametrize("chunk_bytes", [64, 100, 256, 1 << 20])
def test_line_numbers_survive_skipped_rows_and_chunk_boundaries(tmp_path, chunk_bytes):
    path, bad = mixed_file(tmp_path / "mixed.csv")
    lines, stats, chunks = read(path, on_bad_rows="skip", chunk_bytes=chunk_bytes)
    if chunk_bytes == 64:
        assert len(chunks) > 10  # the file really spans many chunks
    expected = [line for line in range(2, 102) if line not in bad]
    assert lines == expected
    # each kept row is the row on that line (its value says which line it was written on)
    assert column(chunks, "c") == [f"v{line}" for line in expected]
    assert (stats.rows_read, stats.rows_kept, stats.rows_skipped) == (100, 100 - len(bad), len(bad))
    assert_accounted(stats)
    listed = {b.line: b.reason for b in stats.examples}
    assert sorted(listed) == sorted(bad)
    for line, reason in bad.items():
        assert reason in listed[line], (line, listed[line])


@pytest.mark.parametrize("chunk_bytes", [64, 256, 1 << 20])
def test_error_mode_reports_the_first_bad_line_across_chunks(tmp_path, chunk_bytes):
    path, bad = mixed_file(tmp_path / "mixed.csv")
    with pytest.raises(DataError, match=re.escape(f"{path}:5: expected 3 columns, found 2 (no value for field 'x')")):
        read(path, chunk_bytes=chunk_bytes)


@pytest.mark.parametrize("chunk_bytes", [64, 256, 1 << 20])
@pytest.mark.parametrize(
    "bad_rows, first",
    [
        ({90: "1,v90"}, "90: expected 3 columns, found 2"),  # a parser error late in the file
        ({90: "1,v90,zz", 91: "1,v91"}, "90: field 'x': 'zz' is not a number"),  # value error before parser error
        ({90: "1,v90", 91: "1,v91,zz"}, "90: expected 3 columns"),  # parser error before value error
        ({60: "3,v60,1", 90: "1,v90"}, "60: field 'label'"),
    ],
    ids=["parser_late", "value_then_parser", "parser_then_value", "value_far_before_parser"],
)
def test_error_mode_reports_the_earliest_of_parser_and_value_errors(tmp_path, chunk_bytes, bad_rows, first):
    rows = many_rows(100)
    for line, row in bad_rows.items():
        rows[line - 1] = row
    path = write(tmp_path / "late.csv", rows)
    with pytest.raises(DataError) as error:
        read(path, chunk_bytes=chunk_bytes)
    assert str(error.value).startswith(f"{path}:{first}"), str(error.value)


@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20])
def test_headerless_line_numbers_start_at_one(tmp_path, chunk_bytes):
    rows = [f"{1 if i % 3 else -1} {i}:1 {i + 100}:1 {i + 200}:1" for i in range(1, 41)]
    rows[0] = "1 1:1 101:1"  # line 1: too few features
    rows[19] = "1 20:1 120:3 220:1"  # line 20: not id:1
    rows[39] = "1 40:1 140:1 240:1 300:1"  # line 40 (last): too many features
    path = write(tmp_path / "rows.libfm", rows)
    lines, stats, chunks = read(path, LIBFM, "skip", chunk_bytes)
    assert lines == [line for line in range(1, 41) if line not in (1, 20, 40)]
    assert column(chunks, "f0") == [str(line) for line in lines]
    assert [b.line for b in sorted(stats.examples, key=lambda b: b.line)] == [1, 20, 40]
    assert_accounted(stats)
    with pytest.raises(DataError, match=re.escape(f"{path}:1: expected 4 columns, found 3 (no value for field 'f2')")):
        read(path, LIBFM, chunk_bytes=chunk_bytes)


def test_counts_add_up_over_files_sharing_stats(tmp_path):
    """One ReadStats can accumulate several files (rows_read counts every line of both)."""
    a, _ = mixed_file(tmp_path / "a.csv")
    b = write(tmp_path / "b.csv", many_rows(30))
    stats = ReadStats("both")
    kept = sum(len(c) for path in (a, b) for c in read_chunks(path, CSV, "skip", stats, 128))
    assert stats.rows_read == 130
    assert stats.rows_kept == kept == 130 - 11
    assert_accounted(stats)


# ---------------------------------------------------------------------------- NaN and infinity


def test_nan_text_in_a_numeric_field_is_a_missing_value(tmp_path):
    path = write(tmp_path / "nan.csv", ["label,c,x", "1,a,nan", "0,b,NaN", "1,c, NAN ", "0,d,", "1,e,2.5"])
    lines, stats, chunks = read(path)
    assert lines == [2, 3, 4, 5, 6] and stats.rows_skipped == 0
    values = np.concatenate([as_float(chunk.columns["x"], -7.0) for chunk in chunks])
    np.testing.assert_array_equal(values, [-7.0, -7.0, -7.0, -7.0, 2.5])  # NaN is filled like an empty field


def test_only_an_empty_field_is_missing_text_like_na_or_null_is_a_value(tmp_path):
    """Arrow's own list of null spellings (NA, NULL, N/A, nan, ...) does not apply."""
    values = ["NA", "NULL", "N/A", "nan", "null", "#N/A", ""]
    path = write(tmp_path / "na.csv", ["label,c,x"] + [f"1,{v},1" for v in values])
    _, _, chunks = read(path)
    assert column(chunks, "c") == values[:-1] + [None]
    bad = write(tmp_path / "null_number.csv", ["label,c,x", "1,a,1", "0,b,NULL"])
    with pytest.raises(DataError, match=re.escape(f"{bad}:3: field 'x': 'NULL' is not a number")):
        read(bad)


def write_parquet(path: Path, label: list, x: list) -> Path:
    columns = {"label": pa.array(label, pa.float64()), "c": [f"v{i}" for i in range(len(x))], "x": pa.array(x, pa.float64())}
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_nan_is_missing_and_infinity_is_a_bad_row(tmp_path):
    nan = write_parquet(tmp_path / "nan.parquet", [1, 0, 1, 0], [1.0, float("nan"), None, 4.0])
    _, stats, chunks = read(nan, PARQUET)
    assert stats.rows_kept == 4
    np.testing.assert_array_equal(as_float(chunks[0].columns["x"], -7.0), [1.0, -7.0, -7.0, 4.0])
    for value in (float("inf"), float("-inf")):
        path = write_parquet(tmp_path / "inf.parquet", [1, 0, 1, 0], [1.0, 2.0, value, 4.0])
        with pytest.raises(DataError, match=re.escape(f"{path}:3: field 'x': {value} is not a finite number")):
            read(path, PARQUET)
        lines, stats, _ = read(path, PARQUET, "skip")
        assert lines == [1, 2, 4]
        assert (stats.rows_read, stats.rows_kept, stats.rows_skipped) == (4, 3, 1)
        assert [b.line for b in stats.examples] == [3]


def test_parquet_nan_or_infinite_label_is_a_bad_row(tmp_path):
    path = write_parquet(tmp_path / "labels.parquet", [1, float("nan"), float("inf"), 0, None], [1.0] * 5)
    with pytest.raises(DataError, match=re.escape(f"{path}:2: field 'label': missing label 'label'")):
        read(path, PARQUET)
    lines, stats, _ = read(path, PARQUET, "skip")
    assert lines == [1, 4]
    assert [(b.line, b.reason) for b in stats.examples] == [
        (2, "field 'label': missing label 'label'"),
        (3, "field 'label': label inf is not a finite number"),
        (5, "field 'label': missing label 'label'"),
    ]
    assert_accounted(stats)


# ---------------------------------------------------------------------------- text that is not UTF-8


@pytest.mark.parametrize("chunk_bytes", [64, 256, 1 << 20])
def test_not_utf8_rows_keep_their_file_lines_across_chunks(tmp_path, chunk_bytes):
    rows = many_rows(100)
    rows[12] = "1,v13\udce9,1"  # line 13
    rows[59] = "0,v60,\udcff"  # line 60, the numeric field
    rows[60] = "1,v61"  # line 61: too few columns (its bytes are UTF-8)
    path = write(tmp_path / "latin1.csv", rows)
    with pytest.raises(DataError) as error:
        read(path, chunk_bytes=chunk_bytes)
    message = str(error.value)
    assert message.startswith(f"{path}:13: field 'c': not valid UTF-8 text (byte 0xe9 at position 3 of b'v13\\xe9')")
    assert "Row #" not in message  # not Arrow's row count
    lines, stats, chunks = read(path, on_bad_rows="skip", chunk_bytes=chunk_bytes)
    assert lines == [line for line in range(2, 102) if line not in (13, 60, 61)]
    assert column(chunks, "c") == [f"v{line}" for line in lines]
    assert (stats.rows_read, stats.rows_kept, stats.rows_skipped) == (100, 97, 3)
    assert sorted((b.line, b.reason.split(":")[0]) for b in stats.examples) == [
        (13, "field 'c'"),
        (60, "field 'x'"),
        (61, "expected 3 columns, found 2 (no value for field 'x')"),
    ]


def test_valid_utf8_text_is_read_as_strings(tmp_path):
    path = write(tmp_path / "utf8.csv", ["label,c,x", "1,café,1", "0,日本,2"])
    _, _, chunks = read(path)
    assert column(chunks, "c") == ["café", "日本"]
    assert chunks[0].columns["c"].type == pa.string()


def test_parquet_binary_column_that_is_not_utf8_is_a_bad_row(tmp_path):
    path = tmp_path / "bytes.parquet"
    table = pa.table(
        {
            "label": pa.array([1, 0, 1], pa.int64()),
            "c": pa.array([b"a", b"caf\xe9", b"c"], pa.binary()),
            "x": pa.array([1.0, 2.0, 3.0]),
        }
    )
    pq.write_table(table, path)
    with pytest.raises(DataError, match=re.escape(f"{path}:2: field 'c': not valid UTF-8 text")):
        read(path, PARQUET)
    lines, stats, chunks = read(path, PARQUET, "skip")
    assert lines == [1, 3] and column(chunks, "c") == ["a", "c"]
    assert (stats.rows_read, stats.rows_kept, stats.rows_skipped) == (3, 2, 1)


# A script that reads a file, prints the DataError and exits while its traceback is
# still alive: the pattern that let Arrow free its CSV reader (and the Python row
# handler it holds) on an I/O thread while the interpreter shut down, which aborted
# the process with "terminate called without an active exception" (exit 134).
READ_AND_EXIT = """
import sys
from mldcn.data.readers import DataError, read_chunks
from mldcn.data.schema import schema_from_dict
schema = schema_from_dict({"name": "t", "label": {"name": "label"}, "categorical": [{"name": "c"}], "numeric": [{"name": "x"}]})
try:
    for chunk in read_chunks(sys.argv[1], schema, chunk_bytes=int(sys.argv[2])):
        pass
except DataError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
"""


def test_a_read_error_never_aborts_the_process(tmp_path):
    """Ten processes that stop on a bad file: each exits 2 with the message, none aborts (134)."""
    rows = many_rows(40)
    rows[12] = "1,caf\udce9,3"
    not_utf8 = write(tmp_path / "latin1.csv", rows)
    good = write(tmp_path / "good.csv", many_rows(40))
    no_x = write(tmp_path / "no_x.csv", ["label,c,y"] + rows[1:])  # a reader error: column missing
    data = gzip.compress("\n".join(many_rows(5000)).encode())
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(data[: len(data) // 2])  # a reader error mid-file
    schema = tmp_path / "schema.yaml"
    schema.write_text("name: t\nlabel: {name: label}\ncategorical:\n  - {name: c}\nnumeric:\n  - {name: x}\n")
    prepare = [sys.executable, "-m", "mldcn", "prepare", "--schema", str(schema), "--out", str(tmp_path / "out")]
    prepare += ["--train", str(not_utf8), "--valid", str(good), "--test", str(good)]

    def read_and_exit(path: Path, chunk_bytes: int) -> list[str]:
        return [sys.executable, "-c", READ_AND_EXIT, str(path), str(chunk_bytes)]

    not_utf8_message = f"{not_utf8}:13: field 'c': not valid UTF-8 text"
    runs = [
        (read_and_exit(not_utf8, 256), not_utf8_message),
        (read_and_exit(not_utf8, 1 << 16), not_utf8_message),
        (read_and_exit(no_x, 1 << 16), "missing"),
        (read_and_exit(truncated, 1 << 12), "truncated"),
        (prepare, not_utf8_message),
    ] * 2
    for start in range(0, len(runs), 2):  # two at a time
        processes = [
            (message, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for command, message in runs[start : start + 2]
        ]
        for message, process in processes:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 2, (process.args, process.returncode, err)
            assert "terminate called" not in err
            assert message in err, err


# pyarrow reports its failure to decode the row for the handler as an unraisable exception
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20])
def test_a_short_row_that_is_not_utf8_stops_the_reader_with_its_line(tmp_path, mode, chunk_bytes):
    """pyarrow cannot hand such a row to the row handler; the error still names its line."""
    rows = many_rows(40)
    rows[29] = "1,caf\udce9"  # line 30
    path = write(tmp_path / "short_latin1.csv", rows)
    with pytest.raises(DataError) as error:
        read(path, on_bad_rows=mode, chunk_bytes=chunk_bytes)
    message = str(error.value)
    assert message.startswith(f"{path}:30: expected 3 columns, found 2, in text that is not UTF-8"), message
    assert "correct it in the file" in message
