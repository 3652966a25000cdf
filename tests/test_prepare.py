"""``mldcn prepare`` on tiny hand-written files: encodings checked by hand, splits, cache.

Golden values are computed here straight from the documented rule (numpy, ``math``,
``datetime``, ``zlib``) and compared with what ``prepare`` writes; categorical ids
are decoded through the saved vocabularies, so a test does not depend on the id a
value happens to get unless the id order is the point of the test.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from mldcn.cli import main
from mldcn.config import ConfigError
from mldcn.data.encode import (
    FORMAT_VERSION,
    Encoder,
    FeatureMapError,
    categorical_strings,
)
from mldcn.data.prepare import SplitConfig, prepare
from mldcn.data.prepared import load_prepared, load_split
from mldcn.data.readers import DataError, read_chunks
from mldcn.data.schema import CategoricalColumn, schema_from_dict


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


def schema(*, categorical=(), numeric=(), sequence=(), min_count=1, label="label"):
    return schema_from_dict(
        {
            "name": "t",
            "label": {"name": label},
            "min_count": min_count,
            "categorical": list(categorical),
            "numeric": list(numeric),
            "sequence": list(sequence),
        }
    )


def prepare_files(tmp_path: Path, s, header: str, train: list[str], valid: list[str], test: list[str], **kwargs):
    """Prepare three small files into ``tmp_path/out``; return (report, dataset, encoder)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = {
        name: write_csv(tmp_path / f"{name}.csv", header, rows)
        for name, rows in (("train", train), ("valid", valid), ("test", test))
    }
    report = prepare(s, tmp_path / "out", **files, **kwargs)
    return report, load_prepared(tmp_path / "out"), Encoder.load(tmp_path / "out")


def column_of(encoder: Encoder, name: str) -> int:
    return [c.name for c in encoder.schema.categorical].index(name)


def decode(encoder: Encoder, name: str, ids: torch.Tensor) -> list[str | None]:
    """Categorical ids back to the vocabulary values (None for the OOV id 0)."""
    vocab = encoder.vocabularies[name].to_pylist()
    return [None if i == 0 else vocab[i - 1] for i in ids.tolist()]


# ---------------------------------------------------------------------------- vocabularies


def test_vocabulary_is_fitted_on_train_only(tmp_path):
    s = schema(categorical=[{"name": "c"}])
    _, data, encoder = prepare_files(
        tmp_path, s, "label,c", ["1,a", "0,a", "1,b"], ["0,z", "1,a", "0,b"], ["1,q", "0,b", "1,z"]
    )
    assert encoder.vocabularies["c"].to_pylist() == ["a", "b"]  # z and q never seen in train
    assert data.features.categorical[0].vocab_size == 3  # OOV + a + b
    assert data.train.categorical[:, 0].tolist() == [1, 1, 2]
    assert data.valid.categorical[:, 0].tolist() == [0, 1, 2]
    assert data.test.categorical[:, 0].tolist() == [0, 2, 0]


def test_min_count_and_vocabulary_order(tmp_path):
    # counts in train: x 3, y 2, w 2, z 1; valid's many z's must not count
    train = [f"1,{v}" for v in "xyxwzwxy"]
    s = schema(categorical=[{"name": "c"}, {"name": "d", "source": "c", "min_count": 3}], min_count=2)
    _, data, encoder = prepare_files(tmp_path, s, "label,c", train, ["0,z"] * 5, ["0,x", "0,y", "0,w", "0,z"])
    # most frequent first; the tie w/y (2 each) is broken by value; z (1 < min_count 2) is OOV
    assert encoder.vocabularies["c"].to_pylist() == ["x", "w", "y"]
    assert encoder.vocabularies["d"].to_pylist() == ["x"]  # the column's own min_count wins
    assert data.test.categorical.tolist() == [[1, 1], [3, 0], [2, 0], [0, 0]]
    assert data.valid.categorical.tolist() == [[0, 0]] * 5
    assert [f.vocab_size for f in data.features.categorical] == [4, 2]


def test_hash_buckets_are_stable_crc32_ids(tmp_path):
    buckets = 7
    s = schema(categorical=[{"name": "h", "source": "c", "hash_buckets": buckets}])
    values = [f"value{i}" for i in range(60)]
    train = [f"{i % 2},{v}" for i, v in enumerate(values)] + ["1,"]  # the last value is missing
    _, first, _ = prepare_files(tmp_path / "a", s, "label,c", train, ["0,unseen"], ["1,value3"])
    _, second, _ = prepare_files(tmp_path / "b", s, "label,c", train, ["0,unseen"], ["1,value3"])
    ids = first.train.categorical[:, 0]
    expected = [1 + zlib.crc32(v.encode()) % buckets for v in values]
    assert ids[:-1].tolist() == expected  # same rule as documented: 1 + crc32 mod N
    assert ids[-1].item() == 0  # a missing value keeps the OOV id 0
    assert set(ids[:-1].tolist()) <= set(range(1, buckets + 1))
    assert len(set(ids[:-1].tolist())) == buckets  # 60 values spread over all 7 buckets
    assert first.features.categorical[0].vocab_size == buckets + 1
    # values unseen in train still hash (no vocabulary), and both runs agree
    assert first.valid.categorical[0, 0].item() == 1 + zlib.crc32(b"unseen") % buckets
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(first, split).categorical, getattr(second, split).categorical)


# ---------------------------------------------------------------------------- numeric


def test_numeric_transforms_against_numpy(tmp_path):
    s = schema(
        numeric=[
            {"name": "raw", "source": "x", "fill": -1.0},
            {"name": "log", "source": "x", "transform": "log"},
            {"name": "std", "source": "x", "transform": "standardize", "fill": 1.5},
            {"name": "logstd", "source": "x", "transform": "log_standardize"},
        ]
    )
    train_x = [3.0, -2.0, None, 100.0, 0.25]
    valid_x = [1000.0, None]
    row = lambda v: f"1,{'' if v is None else v}"  # noqa: E731
    _, data, encoder = prepare_files(
        tmp_path, s, "label,x", [row(v) for v in train_x], [row(v) for v in valid_x], [row(-7.0)]
    )

    def filled(xs, fill):
        return np.array([fill if v is None else v for v in xs])

    def log(v):
        return np.sign(v) * np.log1p(np.abs(v))

    std_train = filled(train_x, 1.5)
    logstd_train = log(filled(train_x, 0.0))
    # population statistics (ddof=0) of the train rows only, each with its own fill
    mean, std = std_train.mean(), std_train.std()
    lmean, lstd = logstd_train.mean(), logstd_train.std()
    assert encoder.numeric_stats["std"]["mean"] == pytest.approx(mean)
    assert encoder.numeric_stats["std"]["std"] == pytest.approx(std)
    for split, xs in (("train", train_x), ("valid", valid_x), ("test", [-7.0])):
        got = getattr(data, split).numeric.numpy()
        expected = np.stack(
            [
                filled(xs, -1.0),
                log(filled(xs, 0.0)),
                (filled(xs, 1.5) - mean) / std,
                (log(filled(xs, 0.0)) - lmean) / lstd,
            ],
            axis=1,
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert data.train.numeric.dtype == torch.float32
    assert data.features.numeric[0].name == "raw" and len(data.features.numeric) == 4


def test_standardize_constant_column_does_not_divide_by_zero(tmp_path):
    s = schema(numeric=[{"name": "x", "transform": "standardize"}])
    _, data, encoder = prepare_files(tmp_path, s, "label,x", ["1,5", "0,5"], ["1,5"], ["0,6"])
    assert encoder.numeric_stats["x"] == {"mean": 5.0, "std": 1.0}
    assert data.train.numeric[:, 0].tolist() == [0.0, 0.0]
    assert data.test.numeric[:, 0].tolist() == [1.0]


# ---------------------------------------------------------------------------- NaN and infinity

NAN_SCHEMA = schema(
    categorical=[
        {"name": "b", "source": "x", "derive": "bucketize", "num_buckets": 3, "fill": 2.0},
        {"name": "l", "source": "x", "derive": "log_square_bucket", "fill": 5.0},
    ],
    numeric=[
        {"name": "raw", "source": "x", "fill": -1.0},
        {"name": "std", "source": "x", "transform": "log_standardize", "fill": 3.0},
    ],
)


def assert_same_prepared(a: Path, b: Path) -> None:
    first, second = load_prepared(a), load_prepared(b)
    assert first.features == second.features
    for split in ("train", "valid", "test"):
        for name in ("categorical", "numeric", "labels"):
            assert torch.equal(getattr(getattr(first, split), name), getattr(getattr(second, split), name)), (split, name)
    assert Encoder.load(a).numeric_stats == Encoder.load(b).numeric_stats
    np.testing.assert_array_equal(Encoder.load(a).boundaries["b"], Encoder.load(b).boundaries["b"])


def test_csv_nan_encodes_exactly_like_an_empty_field(tmp_path):
    xs = ["1", "nan", "4", "NaN", "9", "NAN", "16", "", "25"]
    rows = lambda values: [f"{i % 2},{v}" for i, v in enumerate(values)]  # noqa: E731
    empty = ["" if v.lower() == "nan" else v for v in xs]
    prepare_files(tmp_path / "nan", NAN_SCHEMA, "label,x", rows(xs), rows(xs[:4]), rows(xs[4:]))
    prepare_files(tmp_path / "empty", NAN_SCHEMA, "label,x", rows(empty), rows(empty[:4]), rows(empty[4:]))
    assert_same_prepared(tmp_path / "nan" / "out", tmp_path / "empty" / "out")
    assert load_prepared(tmp_path / "nan" / "out").train.numeric[1, 0].item() == -1.0  # the fill


def test_parquet_nan_encodes_exactly_like_a_null(tmp_path):
    import pyarrow.parquet as pq  # noqa: PLC0415

    s = dataclasses.replace(NAN_SCHEMA, format="parquet")
    xs = [1.0, float("nan"), 4.0, float("nan"), 9.0, 16.0, None, 25.0]
    for kind in ("nan", "null"):
        values = [None if kind == "null" and v is not None and math.isnan(v) else v for v in xs]
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.table({"label": [i % 2 for i in range(len(xs))], "x": pa.array(values, pa.float64())}), path)
        prepare(s, tmp_path / kind, train=path, valid=path, test=path)
    assert_same_prepared(tmp_path / "nan", tmp_path / "null")


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "1e400"])
def test_an_infinite_value_is_a_bad_row(tmp_path, value):
    s = schema(numeric=[{"name": "x"}])
    files = {
        "train": write_csv(tmp_path / "train.csv", "label,x", ["1,1", "0,2"]),
        "valid": write_csv(tmp_path / "valid.csv", "label,x", ["1,1"]),
        "test": write_csv(tmp_path / "test.csv", "label,x", ["1,1", f"0,{value}", "1,3"]),
    }
    with pytest.raises(DataError, match=f"{files['test']}:3: field 'x': '{value}' is not a finite number"):
        prepare(s, tmp_path / "out", **files)
    report = prepare(s, tmp_path / "out", **files, on_bad_rows="skip")
    assert (report["rows_read"], report["rows_written"], report["rows_skipped"]) == (6, 5, 1)
    assert torch.isfinite(load_prepared(tmp_path / "out").test.numeric).all()


# ---------------------------------------------------------------------------- derived categoricals


AVAZU_HOURS = ["14102100", "14102523", "14102612", "14102700", "14103015", "14110209"]


def test_avazu_hour_derivations_match_datetime(tmp_path):
    s = schema(
        categorical=[
            {"name": "hour", "derive": "hour_of_day"},
            {"name": "weekday", "source": "hour", "derive": "weekday"},
            {"name": "weekend", "source": "hour", "derive": "weekend"},
        ]
    )
    _, data, encoder = prepare_files(
        tmp_path, s, "label,hour", [f"1,{h}" for h in AVAZU_HOURS], ["0,14102100"], ["0,14102523"]
    )
    dates = [datetime.date(2000 + int(h[:2]), int(h[2:4]), int(h[4:6])) for h in AVAZU_HOURS]
    assert dates[0].strftime("%A") == "Tuesday"  # 2014-10-21
    ids = data.train.categorical
    assert decode(encoder, "hour", ids[:, 0]) == [h[6:] for h in AVAZU_HOURS]
    assert decode(encoder, "weekday", ids[:, 1]) == [str(d.weekday()) for d in dates]  # Monday = 0
    assert decode(encoder, "weekday", ids[:1, 1]) == ["1"]
    assert decode(encoder, "weekend", ids[:, 2]) == [str(d.weekday() >= 5).lower() for d in dates]
    assert decode(encoder, "weekend", ids[:, 2]).count("true") == 3  # Sat 25th, Sun 26th, Sun 2 Nov
    assert decode(encoder, "weekday", data.test.categorical[:, 1]) == ["5"]  # 2014-10-25 is a Saturday


def log_square_bucket(v: float) -> int:
    """BARS/FuxiCTR's Criteo bucketing, written straight from the formula."""
    return math.floor(math.log(v) ** 2) if v > 2 else int(v)


LOG_SQUARE_VALUES = [-5.0, -1.5, -1.0, 0.0, 0.5, 1.0, 1.9, 2.0, 2.0001, 2.5, 3.0, 7.9, 20.0, 54.6, 1e3, 123456.0]


def test_log_square_bucket_against_reference():
    column = CategoricalColumn("I1", derive="log_square_bucket", fill=0)
    raw = pa.array([str(v) for v in LOG_SQUARE_VALUES] + [None])
    got = categorical_strings(column, raw).to_pylist()
    expected = [str(log_square_bucket(v)) for v in LOG_SQUARE_VALUES] + [str(log_square_bucket(0.0))]
    assert got == expected
    # a non-zero fill is bucketed like a real value
    filled = CategoricalColumn("I1", derive="log_square_bucket", fill=10)
    assert categorical_strings(filled, pa.array([None], pa.string())).to_pylist() == [str(log_square_bucket(10))]


def test_log_square_bucket_through_prepare(tmp_path):
    s = schema(categorical=[{"name": "I1", "derive": "log_square_bucket", "fill": 0}])
    rows = [f"1,{v}" for v in LOG_SQUARE_VALUES] + ["0,"]
    _, data, encoder = prepare_files(tmp_path, s, "label,I1", rows, ["0,1e9"], ["1,3"])
    expected = [str(log_square_bucket(v)) for v in LOG_SQUARE_VALUES] + ["0"]
    assert decode(encoder, "I1", data.train.categorical[:, 0]) == expected
    assert decode(encoder, "I1", data.valid.categorical[:, 0]) == [None]  # bucket 429 never seen in train
    assert decode(encoder, "I1", data.test.categorical[:, 0]) == [str(log_square_bucket(3.0))]


def test_bucketize_ids_follow_value_order(tmp_path):
    num_buckets = 4
    s = schema(categorical=[{"name": "b", "source": "x", "derive": "bucketize", "num_buckets": num_buckets}])
    train_x = list(np.random.default_rng(0).permutation(np.arange(1, 101)))
    test_x = [-50, 0, 1, 25, 26, 50, 51, 75, 76, 100, 1e6]
    _, data, encoder = prepare_files(
        tmp_path, s, "label,x", [f"1,{v}" for v in train_x], ["0,"], [f"0,{v}" for v in test_x]
    )
    assert data.features.categorical[0].vocab_size == num_buckets + 1  # ids 1..num_buckets, 0 unused
    np.testing.assert_allclose(encoder.boundaries["b"], np.quantile(np.arange(1, 101), [0.25, 0.5, 0.75]))
    train_ids = data.train.categorical[:, 0].numpy()
    order = np.argsort(train_x)
    assert (np.diff(train_ids[order]) >= 0).all()  # non-decreasing in the value
    assert sorted(set(train_ids.tolist())) == list(range(1, num_buckets + 1))
    assert np.bincount(train_ids, minlength=num_buckets + 1).tolist() == [0, 25, 25, 25, 25]  # quantiles
    assert data.test.categorical[:, 0].tolist() == [1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert data.valid.categorical[:, 0].tolist() == [1]  # missing -> fill 0 -> the lowest bucket


# ---------------------------------------------------------------------------- sequences


def test_sequence_padding_oov_empty_values_and_truncation(tmp_path):
    s = schema(sequence=[{"name": "s", "separator": "|", "max_len": 3}], categorical=[{"name": "c"}])
    train = ["1,a,A|B", "0,b,B||C|D|E", "1,a,", "0,a,B|E|C|A|D", "1,b,|B|"]
    _, data, encoder = prepare_files(tmp_path, s, "label,c,s", train, ["0,a,Z|A"], ["1,a,Q|R|S|T"])
    # counts: B 4, A 2, C 2, D 2, E 2 -> B first, then the ties by value
    assert encoder.vocabularies["s"].to_pylist() == ["B", "A", "C", "D", "E"]
    ids = {v: i + 2 for i, v in enumerate(encoder.vocabularies["s"].to_pylist())}  # 0 padding, 1 OOV
    assert data.features.sequence[0].vocab_size == 5 + 2
    assert data.features.sequence[0].max_len == 3
    assert data.train.sequence.shape == (5, 1, 3)
    assert data.train.sequence[:, 0].tolist() == [
        [ids["A"], ids["B"], 0],
        [ids["B"], ids["C"], ids["D"]],  # the empty element is ignored; E is cut by max_len
        [0, 0, 0],  # empty: all padding
        [ids["B"], ids["E"], ids["C"]],  # the first max_len values are kept, in order
        [ids["B"], 0, 0],  # leading and trailing separators
    ]
    assert data.valid.sequence[:, 0].tolist() == [[1, ids["A"], 0]]  # unseen -> OOV 1
    assert data.test.sequence[:, 0].tolist() == [[1, 1, 1]]


# ---------------------------------------------------------------------------- splits


ID_SCHEMA = schema(categorical=[{"name": "c"}], numeric=[{"name": "rid"}])


def id_rows(n: int) -> list[str]:
    """Row at file line L has ``rid = L`` (header = line 1), so each output row says where it came from."""
    return [f"{line % 2},v{line % 7},{line}" for line in range(2, n + 2)]


def rids(data, split: str) -> np.ndarray:
    return getattr(data, split).numeric[:, 0].numpy().astype(np.int64)


def test_files_split_keeps_every_row_in_order(tmp_path):
    report, data, _ = prepare_files(tmp_path, ID_SCHEMA, "label,c,rid", id_rows(30), id_rows(5), id_rows(7))
    assert rids(data, "train").tolist() == list(range(2, 32))
    assert rids(data, "valid").tolist() == list(range(2, 7))
    assert rids(data, "test").tolist() == list(range(2, 9))
    assert report["splits"] == {
        "train": {"rows": 30, "positives": {"label": 15}},
        "valid": {"rows": 5, "positives": {"label": 2}},
        "test": {"rows": 7, "positives": {"label": 3}},
    }
    assert data.train.labels[:, 0].tolist() == [float(line % 2) for line in range(2, 32)]
    assert (report["rows_read"], report["rows_written"], report["rows_skipped"]) == (42, 42, 0)


def test_random_split_fractions_and_partition(tmp_path):
    path = write_csv(tmp_path / "all.csv", "label,c,rid", id_rows(2000))
    split = SplitConfig(kind="random", valid_fraction=0.1, test_fraction=0.2, seed=7)
    report = prepare(ID_SCHEMA, tmp_path / "out", input=path, split=split)
    data = load_prepared(tmp_path / "out")
    parts = {name: rids(data, name) for name in ("train", "valid", "test")}
    # a partition of all 2000 rows, each split in file order
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(2, 2002))
    for ids in parts.values():
        assert (np.diff(ids) > 0).all()
    # fractions within 4 standard deviations of the binomial
    for name, fraction in (("valid", 0.1), ("test", 0.2), ("train", 0.7)):
        sd = math.sqrt(2000 * fraction * (1 - fraction))
        assert abs(len(parts[name]) - 2000 * fraction) < 4 * sd, (name, len(parts[name]))
    assert report["splits"]["valid"]["rows"] == len(parts["valid"])
    # another seed gives another assignment
    other = prepare(ID_SCHEMA, tmp_path / "out2", input=path, split=dataclasses.replace(split, seed=8))
    assert not np.array_equal(rids(load_prepared(tmp_path / "out2"), "valid"), parts["valid"])
    assert other["rows_read"] == 2000


def test_random_split_does_not_depend_on_chunking(tmp_path):
    rows = id_rows(1000)
    for line in (17, 18, 400, 401, 402, 999):  # bad rows in skip mode must not shift the assignment
        rows[line - 2] = f"{line % 2},v{line}" if line % 2 else f"x,v{line},{line}"
    path = write_csv(tmp_path / "all.csv", "label,c,rid", rows)
    split = SplitConfig(kind="random", valid_fraction=0.2, test_fraction=0.2, seed=3)
    outputs = []
    for chunk_bytes in (64, 256, 1 << 20):
        out = tmp_path / f"out{chunk_bytes}"
        report = prepare(ID_SCHEMA, out, input=path, split=split, on_bad_rows="skip", chunk_bytes=chunk_bytes)
        assert (report["rows_read"], report["rows_written"], report["rows_skipped"]) == (1000, 994, 6)
        outputs.append((report["splits"], load_prepared(out)))
    first_splits, first = outputs[0]
    assert set(np.concatenate([rids(first, s) for s in ("train", "valid", "test")]).tolist()) == (
        set(range(2, 1002)) - {17, 18, 400, 401, 402, 999}
    )
    for splits, data in outputs[1:]:
        assert splits == first_splits
        for name in ("train", "valid", "test"):
            a, b = getattr(first, name), getattr(data, name)
            assert torch.equal(a.categorical, b.categorical)
            assert torch.equal(a.numeric, b.numeric)
            assert torch.equal(a.labels, b.labels)


def test_time_split_numeric_bounds(tmp_path):
    # days 1..12: compared as numbers, 9 < 11 (as text "9" > "11" would put it in test)
    rows = [f"{d % 2},v{d},{d}" for d in range(1, 13)] * 2
    path = write_csv(tmp_path / "log.csv", "label,c,day", rows)
    s = schema(categorical=[{"name": "c"}], numeric=[{"name": "day"}])
    split = SplitConfig(kind="time", time_column="day", valid_from="9", test_from="11")
    report = prepare(s, tmp_path / "out", input=path, split=split)
    data = load_prepared(tmp_path / "out")
    days = {name: sorted(set(getattr(data, name).numeric[:, 0].int().tolist())) for name in ("train", "valid", "test")}
    assert days == {"train": list(range(1, 9)), "valid": [9, 10], "test": [11, 12]}
    assert report["splits"]["train"]["rows"] == 16
    # the vocabulary saw only the train days: v9..v12 are OOV in valid and test
    assert data.valid.categorical[:, 0].tolist() == [0] * 4
    assert data.test.categorical[:, 0].tolist() == [0] * 4


def test_time_split_string_bounds_on_a_column_that_is_not_a_feature(tmp_path):
    stamps = ["2017-05-06 00:00:00", "2017-05-07 10:00:00", "2017-05-08 00:00:00", "2017-05-09 12:30:00",
              "2017-05-10 00:00:00", "2017-05-11 08:00:00"]  # fmt: skip
    path = write_csv(tmp_path / "log.csv", "label,c,time_stamp", [f"1,v{i},{t}" for i, t in enumerate(stamps)])
    s = schema(categorical=[{"name": "c"}])
    split = SplitConfig(kind="time", time_column="time_stamp", valid_from="2017-05-08", test_from="2017-05-10")
    report = prepare(s, tmp_path / "out", input=path, split=split)
    assert {k: v["rows"] for k, v in report["splits"].items()} == {"train": 2, "valid": 2, "test": 2}
    encoder = Encoder.load(tmp_path / "out")
    assert encoder.vocabularies["c"].to_pylist() == ["v0", "v1"]
    assert load_prepared(tmp_path / "out").features.names == ("c",)  # the time column is read, not a feature


def test_empty_split_is_an_error(tmp_path):
    path = write_csv(tmp_path / "log.csv", "label,c,day", [f"1,v,{d}" for d in range(1, 5)])
    s = schema(categorical=[{"name": "c"}])
    split = SplitConfig(kind="time", time_column="day", valid_from="3", test_from="10")
    with pytest.raises(DataError, match="the test split is empty"):
        prepare(s, tmp_path / "out", input=path, split=split)
    split = SplitConfig(kind="time", time_column="day", valid_from="0", test_from="3")
    with pytest.raises(DataError, match="no training rows"):
        prepare(s, tmp_path / "out", input=path, split=split)


def test_split_arguments_are_checked(tmp_path):
    path = write_csv(tmp_path / "a.csv", "label,c", ["1,a"])
    s = schema(categorical=[{"name": "c"}])
    with pytest.raises(ConfigError):
        prepare(s, tmp_path / "out", train=path, valid=path)  # no test
    with pytest.raises(ConfigError):
        prepare(s, tmp_path / "out", input=path, train=path, split=SplitConfig(kind="random"))
    with pytest.raises(ConfigError):
        SplitConfig(kind="random", valid_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError):
        SplitConfig(kind="time", time_column="t")
    with pytest.raises(DataError, match="file not found"):
        prepare(s, tmp_path / "out", train=path, valid=path, test=tmp_path / "missing.csv")


# ---------------------------------------------------------------------------- loading and the cache


FULL_SCHEMA = schema(
    categorical=[
        {"name": "c"},
        {"name": "h", "source": "c", "hash_buckets": 5},
        {"name": "b", "source": "x", "derive": "bucketize", "num_buckets": 3},
        {"name": "l", "source": "x", "derive": "log_square_bucket"},
    ],
    numeric=[{"name": "x", "transform": "log_standardize"}],
    sequence=[{"name": "s", "max_len": 4}, {"name": "t", "separator": ";", "max_len": 2}],
)
FULL_HEADER = "label,c,x,s,t"


def full_rows(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        seq = "|".join(f"g{k}" for k in rng.integers(0, 8, size=rng.integers(0, 6)))
        tags = ";".join(f"t{k}" for k in rng.integers(0, 4, size=rng.integers(0, 3)))
        x = "" if rng.random() < 0.1 else f"{rng.normal(10, 20):.3f}"
        rows.append(f"{rng.integers(0, 2)},c{rng.integers(0, 12)},{x},{seq},{tags}")
    return rows


@pytest.fixture
def full(tmp_path):
    """A prepared directory with every kind of field; (out dir, input files)."""
    files = {
        name: write_csv(tmp_path / f"{name}.csv", FULL_HEADER, full_rows(n, seed))
        for name, n, seed in (("train", 200, 0), ("valid", 50, 1), ("test", 60, 2))
    }
    out = tmp_path / "out"
    prepare(FULL_SCHEMA, out, **files)
    return out, files


def test_load_prepared_streamed_and_in_memory_agree(full):
    out, _ = full
    in_memory, streamed = load_prepared(out, "memory"), load_prepared(out, "stream")
    assert in_memory.features == streamed.features
    assert in_memory.info["train_rows"] == 200 and streamed.info["test_rows"] == 60
    assert (in_memory.info["load"], streamed.info["load"]) == ("memory", "stream")
    assert in_memory.info["positive_rate"] == streamed.info["positive_rate"]
    for name in ("train", "valid", "test"):
        a, b = getattr(in_memory, name), getattr(streamed, name)
        b = b.rows(0, len(b))
        assert a.categorical.shape == (len(a), 4)
        assert a.sequence.shape == (len(a), 2, 4)  # padded to the longest max_len
        for field in ("categorical", "numeric", "labels", "sequence"):
            assert torch.equal(getattr(a, field), getattr(b, field))
    # the second sequence field never uses the positions beyond its own max_len
    assert in_memory.train.sequence[:, 1, 2:].abs().sum() == 0
    assert (in_memory.train.sequence[:, 0] > 0).any()
    assert load_split(out, "valid").labels.shape == (50, 1)


def test_second_prepare_reuses_and_does_not_rewrite(full):
    out, files = full
    feature_map = out / "feature_map.json"
    before = feature_map.stat().st_mtime_ns
    label_before = (out / "train" / "labels.bin").stat().st_mtime_ns
    report = prepare(FULL_SCHEMA, out, **files)
    assert report["reused"] is True
    assert report["splits"]["train"]["rows"] == 200
    assert feature_map.stat().st_mtime_ns == before
    assert (out / "train" / "labels.bin").stat().st_mtime_ns == label_before


def rebuilt(out: Path, files: dict, s=FULL_SCHEMA, **kwargs) -> bool:
    """Did ``prepare`` rebuild (and rewrite feature_map.json)?"""
    feature_map = out / "feature_map.json"
    os.utime(feature_map, ns=(0, 0))  # an mtime no rewrite can keep
    report = prepare(s, out, **files, **kwargs)
    rewritten = feature_map.stat().st_mtime_ns != 0
    assert report["reused"] is (not rewritten)
    return rewritten


def test_touching_an_input_rebuilds(full):
    out, files = full
    stat = files["valid"].stat()
    os.utime(files["valid"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert rebuilt(out, files)
    assert not rebuilt(out, files)


def test_changing_an_input_rebuilds_with_the_new_rows(full):
    out, files = full
    write_csv(files["test"], FULL_HEADER, full_rows(61, 5))
    assert rebuilt(out, files)
    assert load_prepared(out).info["test_rows"] == 61


def test_changing_schema_split_or_mode_rebuilds_and_force_always_does(full):
    out, files = full
    assert rebuilt(out, files, dataclasses.replace(FULL_SCHEMA, min_count=3))
    assert not rebuilt(out, files, dataclasses.replace(FULL_SCHEMA, min_count=3))
    assert rebuilt(out, files)  # back to the original schema
    assert rebuilt(out, files, on_bad_rows="skip")
    assert rebuilt(out, files, force=True)
    assert rebuilt(out, files, force=True)


def test_another_format_version_is_a_clear_error_and_prepare_rebuilds(full):
    out, files = full
    feature_map = json.loads((out / "feature_map.json").read_text())
    feature_map["format_version"] = FORMAT_VERSION + 1
    (out / "feature_map.json").write_text(json.dumps(feature_map))
    with pytest.raises(FeatureMapError, match="format version") as error:
        load_prepared(out)
    assert str(out / "feature_map.json") in str(error.value)
    with pytest.raises(FeatureMapError, match="format version"):
        Encoder.load(out)
    assert prepare(FULL_SCHEMA, out, **files)["reused"] is False  # an old directory is rebuilt
    assert load_prepared(out).info["train_rows"] == 200


def test_truncated_array_is_a_clear_error(full):
    out, _ = full
    label = out / "train" / "labels.bin"
    label.write_bytes(label.read_bytes()[:-6])
    for load in ("memory", "stream"):
        with pytest.raises(FeatureMapError, match="expected 800") as error:
            load_prepared(out, load)
        assert str(label) in str(error.value)


def test_prepare_rebuilds_a_truncated_array_instead_of_reusing_it(full):
    out, files = full
    label = out / "train" / "labels.bin"
    label.write_bytes(label.read_bytes()[:-6])
    report = prepare(FULL_SCHEMA, out, **files)
    assert report["reused"] is False
    assert label.stat().st_size == 4 * report["splits"]["train"]["rows"]
    assert len(load_prepared(out).train) == report["splits"]["train"]["rows"]


def test_missing_or_broken_feature_map_is_a_clear_error(full, tmp_path):
    out, _ = full
    (out / "valid" / "sequence.bin").unlink()
    with pytest.raises(FeatureMapError, match="sequence.bin: missing"):
        load_prepared(out)
    (out / "vocab" / "c.parquet").unlink()
    with pytest.raises(FeatureMapError, match="vocabulary file missing"):
        Encoder.load(out)
    (out / "feature_map.json").write_text("{not json")
    with pytest.raises(FeatureMapError, match="not valid JSON"):
        load_prepared(out)
    with pytest.raises(FeatureMapError, match="not found"):
        load_prepared(tmp_path / "nothing_here")


# ---------------------------------------------------------------------------- prepared arrays unlike the feature map


def corrupt(out: Path, split: str, name: str, index: tuple, value) -> Path:
    """Write ``value`` at ``index`` of a prepared array in place, as a bad disk or a bug would."""
    feature_map = json.loads((out / "feature_map.json").read_text())
    rows = feature_map["rows"][split]
    fields = feature_map["features"]
    shapes = {
        "categorical": ("<i4", (rows, len(fields["categorical"]))),
        "numeric": ("<f4", (rows, len(fields["numeric"]))),
        "labels": ("<f4", (rows, len(fields["tasks"]))),
        "sequence": ("<i4", (rows, len(fields["sequence"]), max(f["max_len"] for f in fields["sequence"]))),
    }
    dtype, shape = shapes[name]
    path = out / split / f"{name}.bin"
    array = np.memmap(path, dtype=dtype, mode="r+", shape=shape)
    array[index] = value
    array.flush()
    del array
    return path


def vocab_size(out: Path, kind: str, name: str) -> int:
    fields = json.loads((out / "feature_map.json").read_text())["features"][kind]
    return next(f["vocab_size"] for f in fields if f["name"] == name)


# (split, array, index, value or the field whose vocab_size is the value, expected message parts)
CORRUPTIONS = {
    "id_at_vocab_size": ("train", "categorical", (37, 1), "h", ["row 37, field 'h': id 6 is outside [0, 6)"]),
    "negative_id": ("valid", "categorical", (0, 0), -1, ["row 0, field 'c': id -1 is outside [0, "]),
    "sequence_id": ("test", "sequence", (59, 1, 1), "t", ["row 59, field 't': id 6 is outside [0, 6)"]),
    "label_nan": ("train", "labels", (12, 0), np.nan, ["row 12, task 'label': label nan is not 0 or 1"]),
    "label_half": ("test", "labels", (3, 0), 0.5, ["row 3, task 'label': label 0.5 is not 0 or 1"]),
    "numeric_inf": ("train", "numeric", (199, 0), np.inf, ["row 199, field 'x': inf is not a finite number"]),
    "numeric_nan": ("valid", "numeric", (7, 0), np.nan, ["row 7, field 'x': nan is not a finite number"]),
}


@pytest.mark.parametrize("check_bytes", [None, 40], ids=["one_block", "blocks_of_a_few_rows"])
@pytest.mark.parametrize("load", ["memory", "stream"])
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_prepared_values_outside_the_feature_map_are_a_clear_error(full, monkeypatch, case, load, check_bytes):
    import mldcn.data.prepared as prepared  # noqa: PLC0415

    if check_bytes is not None:
        monkeypatch.setattr(prepared, "CHECK_BLOCK_BYTES", check_bytes)
    out, _ = full
    split, name, index, value, expected = CORRUPTIONS[case]
    if isinstance(value, str):
        value = vocab_size(out, "sequence" if name == "sequence" else "categorical", value)
    path = corrupt(out, split, name, index, value)
    for loader in (lambda: load_prepared(out, load), lambda: load_split(out, split, load)):
        with pytest.raises(FeatureMapError) as error:
            loader()
        message = str(error.value)
        assert message.startswith(f"{path}: "), message
        for part in expected:
            assert part in message, message
        assert "prepare the data again" in message


def test_the_first_bad_row_is_reported(full, monkeypatch):
    import mldcn.data.prepared as prepared  # noqa: PLC0415

    monkeypatch.setattr(prepared, "CHECK_BLOCK_BYTES", 64)  # 4 rows of 16 bytes per block
    out, _ = full
    corrupt(out, "train", "categorical", (150, 0), 10_000)
    corrupt(out, "train", "categorical", (90, 3), 10_000)
    corrupt(out, "train", "categorical", (90, 2), -5)  # the same row: the first field is named
    with pytest.raises(FeatureMapError, match="row 90, field 'b': id -5 is outside"):
        load_prepared(out, "stream")


def test_prepare_rebuilds_corrupt_values_instead_of_reusing_them(full):
    out, files = full
    corrupt(out, "train", "labels", (5, 0), 7.0)
    report = prepare(FULL_SCHEMA, out, **files)
    assert report["reused"] is False
    assert set(load_prepared(out).train.labels.unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------------------- prepared output appears only complete


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad_input", ["train", "test"], ids=["fit_pass", "encode_pass"])
def test_a_failed_prepare_leaves_the_earlier_directory_as_it_was(full, bad_input):
    out, files = full
    before, loaded = snapshot(out), load_prepared(out)
    rows = full_rows(400, 7)
    rows[350] = "0,c1,zz,g1,t1"  # line 352: not a number, far past the first chunks
    bad = write_csv(out.parent / f"bad_{bad_input}.csv", FULL_HEADER, rows)
    with pytest.raises(DataError, match=f"{bad}:352: field 'x'"):
        prepare(FULL_SCHEMA, out, **{**files, bad_input: bad}, chunk_bytes=1024)
    assert snapshot(out) == before  # nothing half-written, no temporary folder left
    again = load_prepared(out)
    assert again.info == loaded.info
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(again, split).categorical, getattr(loaded, split).categorical)


def test_an_interrupted_prepare_leaves_the_earlier_directory_as_it_was(full):
    out, files = full
    before = snapshot(out)

    def interrupt(message: str) -> None:
        if message == f"encoding {files['test']}":  # train and valid are written by now
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(FULL_SCHEMA, out, **files, force=True, progress=interrupt)
    assert snapshot(out) == before
    assert load_prepared(out).info["test_rows"] == 60


def test_a_failed_first_prepare_leaves_no_output_directory(tmp_path):
    train = write_csv(tmp_path / "train.csv", FULL_HEADER, full_rows(50, 0))
    bad = write_csv(tmp_path / "bad.csv", FULL_HEADER, ["1,c1,2,,", "2,c1,2,,"])
    with pytest.raises(DataError, match=f"{bad}:3: field 'label'"):
        prepare(FULL_SCHEMA, tmp_path / "out", train=train, valid=train, test=bad)
    assert not (tmp_path / "out").exists()


def test_a_successful_prepare_replaces_only_its_own_entries(full):
    out, files = full
    (out / "NOTES.txt").write_text("mine")
    write_csv(files["test"], FULL_HEADER, full_rows(61, 5))
    prepare(FULL_SCHEMA, out, **files)
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.txt", "feature_map.json", "test", "train", "valid", "vocab"]
    assert load_prepared(out).info["test_rows"] == 61


def test_encoder_save_load_round_trip(full, tmp_path):
    out, files = full
    encoder = Encoder.load(out)
    encoder.save(tmp_path / "copy")
    again = Encoder.load(tmp_path / "copy")
    assert again.features == encoder.features == load_prepared(out).features
    assert again.numeric_stats == encoder.numeric_stats
    # the same rows encode to identical arrays, and to what prepare wrote
    chunks = list(read_chunks(files["test"], FULL_SCHEMA))
    stored = load_prepared(out).test
    start = 0
    for chunk in chunks:
        a, b = encoder.encode(chunk.columns), again.encode(chunk.columns)
        np.testing.assert_array_equal(a.categorical, b.categorical)
        np.testing.assert_array_equal(a.numeric, b.numeric)
        np.testing.assert_array_equal(a.sequence, b.sequence)
        stop = start + len(chunk)
        np.testing.assert_array_equal(a.categorical, stored.categorical[start:stop].numpy())
        np.testing.assert_array_equal(a.numeric, stored.numeric[start:stop].numpy())
        np.testing.assert_array_equal(a.sequence, stored.sequence[start:stop].numpy())
        start = stop
    assert start == 60


# ---------------------------------------------------------------------------- row accounting and the CLI


BAD_TRAIN = ["1,a,1", "0,b", "1,a,2", "2,a,3", "0,b,4"]  # lines 3 (columns) and 5 (label) are bad
BAD_TEST = ["1,a,1", "0,b,zz", "1,a,2"]  # line 3 (numeric) is bad


def write_bad_inputs(tmp_path: Path) -> dict[str, Path]:
    header = "label,c,x"
    return {
        "train": write_csv(tmp_path / "train.csv", header, BAD_TRAIN),
        "valid": write_csv(tmp_path / "valid.csv", header, ["1,a,1", "0,c,2"]),
        "test": write_csv(tmp_path / "test.csv", header, BAD_TEST),
    }


def test_report_accounts_for_every_row(tmp_path):
    files = write_bad_inputs(tmp_path)
    s = schema(categorical=[{"name": "c"}], numeric=[{"name": "x"}])
    with pytest.raises(DataError, match=f"{files['train']}:3: expected 3 columns, found 2"):
        prepare(s, tmp_path / "out", **files)
    report = prepare(s, tmp_path / "out", **files, on_bad_rows="skip")
    assert (report["rows_read"], report["rows_written"], report["rows_skipped"]) == (10, 7, 3)
    assert report["rows_read"] == report["rows_written"] + report["rows_skipped"]
    assert {k: v["rows"] for k, v in report["splits"].items()} == {"train": 3, "valid": 2, "test": 2}
    inputs = {Path(entry["path"]).stem: entry for entry in report["inputs"]}
    for entry in inputs.values():
        assert entry["rows_read"] == entry["rows_kept"] + entry["rows_skipped"]
    assert [e["line"] for e in inputs["train"]["skipped_examples"]] == [3, 5]
    assert "label must be 0 or 1" in inputs["train"]["skipped_examples"][1]["reason"]
    assert [e["line"] for e in inputs["test"]["skipped_examples"]] == [3]
    assert "field 'x'" in inputs["test"]["skipped_examples"][0]["reason"]
    # the report is saved with the data
    saved = json.loads((tmp_path / "out" / "feature_map.json").read_text())
    assert saved["report"]["rows_skipped"] == 3 and saved["rows"] == {"train": 3, "valid": 2, "test": 2}


def test_cli_prepare_prints_counts_and_skipped_lines(tmp_path, capsys):
    files = write_bad_inputs(tmp_path)
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(
        "name: tiny\nlabel: {name: label}\ncategorical:\n  - {name: c}\nnumeric:\n  - {name: x}\n"
    )
    args = ["prepare", "--schema", str(schema_file), "--out", str(tmp_path / "out")]
    args += ["--train", str(files["train"]), "--valid", str(files["valid"]), "--test", str(files["test"])]

    assert main(args) == 2  # the default: the first bad row is an error, with file and line
    err = capsys.readouterr().err
    assert f"{files['train']}:3: expected 3 columns, found 2 (no value for field 'x')" in err
    assert "Traceback" not in err

    assert main(args + ["--on-bad-rows", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"{files['train']}: 5 rows read = 3 written + 2 skipped" in out
    assert f"{files['valid']}: 2 rows read = 2 written + 0 skipped" in out
    assert f"{files['test']}: 3 rows read = 2 written + 1 skipped" in out
    assert "skipped line 3: expected 3 columns, found 2" in out
    assert "skipped line 5: field 'label': label must be 0 or 1, got '2'" in out
    assert "skipped line 3: field 'x': 'zz' is not a number" in out
    assert "splits: train 3 (positive: label 66.7%); valid 2 (positive: label 50.0%); test 2 (positive: label 100.0%)" in out
    assert "10 rows in" in out

    assert main(args + ["--on-bad-rows", "skip"]) == 0
    out = capsys.readouterr().out
    assert "reusing the prepared data" in out
    assert f"{files['train']}: 5 rows read = 3 written + 2 skipped" in out


def test_cli_prepare_random_split_and_min_count(tmp_path, capsys):
    path = write_csv(tmp_path / "all.csv", "label,c,rid", id_rows(300))
    out = tmp_path / "out"
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text("label: {name: label}\ncategorical:\n  - {name: c}\nnumeric:\n  - {name: rid}\n")
    args = ["prepare", "--schema", str(schema_file), "--input", str(path), "--out", str(out)]
    assert main(args + ["--valid-fraction", "0.2", "--test-fraction", "0.1", "--split-seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert f"{path}: 300 rows read = 300 written + 0 skipped" in printed
    direct = prepare(
        schema(categorical=[{"name": "c"}], numeric=[{"name": "rid"}]),
        tmp_path / "direct",
        input=path,
        split=SplitConfig(kind="random", valid_fraction=0.2, test_fraction=0.1, seed=5),
    )
    saved = json.loads((out / "feature_map.json").read_text())
    assert saved["report"]["splits"] == direct["splits"]
    # --min-count overrides the schema's: c takes 7 values ~ 30 times each in train
    assert main(args + ["--min-count", "1000", "--force"]) == 0
    capsys.readouterr()
    assert Encoder.load(out).vocabularies["c"].to_pylist() == []
    assert load_prepared(out).train.categorical.abs().sum() == 0


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(full):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    out, files = full
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".prepare.tmp-{int(gone.stdout)}"  # as left by a run killed with SIGKILL
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "labels.bin").write_bytes(b"half")
    prepare(FULL_SCHEMA, out, **files, force=True)
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == ["feature_map.json", "test", "train", "valid", "vocab"]
