"""Every built-in schema on the real samples in ``../shared/data``: counts, fields, one epoch.

The samples are read in place (their terms forbid copying them into this repository);
everything written goes to pytest's temporary directories. The known counts come
from each folder's SOURCE.md. Without the shared folder these tests are skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mldcn.data.encode import Encoder
from mldcn.data.prepare import SplitConfig, prepare
from mldcn.data.prepared import load_prepared
from mldcn.data.readers import DataError
from mldcn.data.schema import builtin_schemas, load_schema
from mldcn.models import create_model
from mldcn.train.loop import TrainConfig, fit, predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FRAPPE = DATA / "frappe_x1"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared sample data not found at {DATA}")

RANDOM = SplitConfig(kind="random", valid_fraction=0.2, test_fraction=0.2, seed=2021)
ONE_EPOCH = TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False, seed=0)


def total(report: dict, key: str) -> int:
    """Summed over the splits (and, for positives, over the one task of these samples)."""
    values = [split[key] for split in report["splits"].values()]
    return sum(sum(v.values()) if isinstance(v, dict) else v for v in values)


def train_one_epoch(data, rows: int | None = None) -> np.ndarray:
    """Train the default ML-DCN preset one epoch; return its test predictions."""
    torch.manual_seed(0)
    model = create_model("mldcn", data.features)
    train = data.train if rows is None else data.train.rows(0, rows)
    valid = data.valid if rows is None else data.valid.rows(0, rows)
    result = fit(model, train, valid, ONE_EPOCH)
    assert len(result.history) == 1
    assert math.isfinite(result.history[0]["train_loss"])
    test = data.test if rows is None else data.test.rows(0, rows)
    p = predict(model, test)
    assert p.shape == (len(test), 1)  # [N, T]: these samples have one task
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    return p


def check_ids_in_range(data) -> None:
    """Every id is a valid row of its embedding table."""
    for name in ("train", "valid", "test"):
        split = getattr(data, name)
        for j, field in enumerate(data.features.categorical):
            ids = split.categorical[:, j]
            assert ids.min() >= 0 and ids.max() < field.vocab_size, field.name
        for j, field in enumerate(data.features.sequence):
            ids = split.sequence[:, j]
            assert ids.min() >= 0 and ids.max() < field.vocab_size, field.name
            assert (ids[:, field.max_len :] == 0).all()
        assert torch.isfinite(split.numeric).all()
        assert set(split.labels.unique().tolist()) <= {0.0, 1.0}


def test_every_builtin_schema_is_covered():
    # adult: tests/test_labels.py
    assert builtin_schemas() == ["adult", "avazu", "criteo", "criteo_csv", "frappe", "frappe_libfm", "movielens", "taobao"]


def test_criteo_csv_sample(tmp_path):
    s = dataclasses.replace(load_schema("criteo_csv"), min_count=1)
    report = prepare(s, tmp_path, input=DATA / "criteo_sample" / "criteo_sample.txt", split=RANDOM)
    assert (report["rows_read"], report["rows_written"], report["rows_skipped"]) == (200, 200, 0)
    assert total(report, "positives") == 49
    data = load_prepared(tmp_path)
    assert data.features.num_fields == 39
    assert len(data.features.categorical) == 39 and not data.features.numeric
    assert data.features.names[:2] == ("I1", "I2") and data.features.names[-1] == "C26"
    check_ids_in_range(data)
    # I1..I13 are bucketed as floor(ln(v)^2) if v > 2 else int(v), missing -> 0
    with open(DATA / "criteo_sample" / "criteo_sample.txt", newline="") as f:
        raw = list(csv.DictReader(f))
    encoder = Encoder.load(tmp_path)
    for i in range(1, 14):
        values = [float(r[f"I{i}"]) if r[f"I{i}"] else 0.0 for r in raw]
        buckets = {str(math.floor(math.log(v) ** 2) if v > 2 else int(v)) for v in values}
        vocab = set(encoder.vocabularies[f"I{i}"].to_pylist())
        assert vocab and vocab <= buckets, f"I{i}"
    train_one_epoch(data)


def test_avazu_sample(tmp_path):
    report = prepare(load_schema("avazu"), tmp_path, input=DATA / "avazu_sample" / "avazu_sample.txt", split=RANDOM)
    assert (report["rows_read"], report["rows_written"], report["rows_skipped"]) == (100, 100, 0)
    assert total(report, "positives") == 20
    data = load_prepared(tmp_path)
    assert data.features.num_fields == 24  # 21 raw categoricals + hour of day, weekday, weekend
    check_ids_in_range(data)
    # every row is from 2014-10-21 00:00, a Tuesday
    encoder = Encoder.load(tmp_path)
    assert encoder.vocabularies["hour"].to_pylist() == ["00"]
    assert encoder.vocabularies["weekday"].to_pylist() == ["1"]
    assert encoder.vocabularies["weekend"].to_pylist() == ["false"]
    names = data.features.names
    for name in ("hour", "weekday", "weekend"):
        assert (data.test.categorical[:, names.index(name)] == 1).all()
    train_one_epoch(data)


@pytest.fixture(scope="module")
def frappe_pair(tmp_path_factory):
    """Frappe prepared from the CSVs and from the libfm originals, on the same rows.

    valid.csv / frappe.validation.libfm is the train split and test.csv /
    frappe.test.libfm both valid and test (small and fast; the real train file is
    a reconstruction anyway).
    """
    out = tmp_path_factory.mktemp("frappe")
    csv_report = prepare(
        load_schema("frappe"), out / "csv", train=FRAPPE / "valid.csv", valid=FRAPPE / "test.csv", test=FRAPPE / "test.csv"
    )
    original = FRAPPE / "original"
    libfm_report = prepare(
        load_schema("frappe_libfm"),
        out / "libfm",
        train=original / "frappe.validation.libfm",
        valid=original / "frappe.test.libfm",
        test=original / "frappe.test.libfm",
    )
    return (csv_report, load_prepared(out / "csv")), (libfm_report, load_prepared(out / "libfm"))


@pytest.mark.parametrize("which", ["csv", "libfm"])
def test_frappe_counts_and_training(frappe_pair, which):
    report, data = frappe_pair[0 if which == "csv" else 1]
    assert report["splits"]["train"] == {"rows": 57_722, "positives": {"click": 19_063}}
    assert report["splits"]["test"] == {"rows": 28_860, "positives": {"click": 9_536}}
    assert report["rows_skipped"] == 0
    assert data.features.num_fields == 10 and not data.features.numeric and not data.features.sequence
    check_ids_in_range(data)
    train_one_epoch(data, rows=2048)


def test_frappe_csv_and_libfm_encode_the_same_rows_identically(frappe_pair):
    (_, from_csv), (_, from_libfm) = frappe_pair
    for name in ("train", "test"):
        a, b = getattr(from_csv, name), getattr(from_libfm, name)
        assert torch.equal(a.labels, b.labels)
        # both vocabularies are fitted on the same train rows with the same values (NFM's
        # global ids), so even the ids agree, not only up to a renaming per field
        assert torch.equal(a.categorical, b.categorical)
    assert [f.vocab_size for f in from_csv.features.categorical] == [
        f.vocab_size for f in from_libfm.features.categorical
    ]
    # frappe ids are all seen in train except a few test users/items: OOV is rare but possible
    assert (from_csv.test.categorical == 0).float().mean() < 0.01


def test_movielens_sample_multivalued_genres(tmp_path):
    path = DATA / "movielens1m_sample" / "movielens_sample.txt"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    positives = sum(float(r["rating"]) > 3 for r in rows)
    assert (len(rows), positives) == (200, 113)
    report = prepare(load_schema("movielens"), tmp_path, input=path, split=RANDOM)
    assert (report["rows_read"], report["rows_written"]) == (200, 200)
    assert total(report, "positives") == positives
    data = load_prepared(tmp_path)
    assert data.features.num_fields == 7  # 6 categorical + genres
    assert [f.name for f in data.features.sequence] == ["genres"]
    assert data.train.sequence.shape[1:] == (1, 6)
    check_ids_in_range(data)
    # multi-valued: rows with 2+ genres keep them all (at most 5 here, max_len 6)
    lengths = (data.train.sequence[:, 0] > 0).sum(dim=1)
    assert lengths.max() >= 2 and lengths.min() >= 1
    encoder = Encoder.load(tmp_path)
    assert set(encoder.vocabularies["genres"].to_pylist()) <= {
        g for r in rows for g in r["genres"].split("|")
    }
    train_one_epoch(data)


def test_taobao_sample_sequence_and_price(tmp_path):
    folder = DATA / "taobaoad_tiny"
    report = prepare(
        load_schema("taobao"),
        tmp_path,
        train=folder / "train_sample.csv",
        valid=folder / "valid_sample.csv",
        test=folder / "test_sample.csv",
    )
    assert report["splits"] == {name: {"rows": 100, "positives": {"click": 4}} for name in ("train", "valid", "test")}
    data = load_prepared(tmp_path)
    assert data.features.num_fields == 17  # 15 categorical + price + click_sequence
    assert [f.name for f in data.features.numeric] == ["price"]
    assert data.train.sequence.shape[1:] == (1, 20)
    check_ids_in_range(data)
    # price is log-standardised with train statistics: mean 0, std 1 on train
    price = data.train.numeric[:, 0].double()
    assert abs(price.mean().item()) < 1e-5
    assert price.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert (data.train.sequence[:, 0] > 1).sum(dim=1).max() >= 2  # real multi-value sequences
    # valid and test are the same file, so they encode identically
    assert torch.equal(data.valid.categorical, data.test.categorical)
    assert torch.equal(data.valid.sequence, data.test.sequence)
    train_one_epoch(data)


# ---------------------------------------------------------------------------- headerless Criteo TSV


def criteo_rows() -> list[list[str]]:
    """Hand-made rows in the 40-column Criteo layout, with missing values."""
    rows = []
    for r in range(12):
        ints = ["" if (r + k) % 5 == 0 else str((r * 7 + k * 3) % 40 - 1) for k in range(13)]
        cats = ["" if (r + k) % 6 == 0 else f"{(r * 13 + k) % 4:08x}" for k in range(26)]
        rows.append([str(r % 2), *ints, *cats])
    return rows


def test_criteo_headerless_tsv_matches_criteo_csv(tmp_path):
    rows = criteo_rows()
    tsv = tmp_path / "day_0.tsv"
    tsv.write_text("".join("\t".join(r) + "\n" for r in rows))
    header = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    with_header = tmp_path / "sample.csv"
    with_header.write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))

    tsv_schema = dataclasses.replace(load_schema("criteo"), min_count=1)
    assert tsv_schema.delimiter == "\t" and not tsv_schema.header
    report = prepare(tsv_schema, tmp_path / "tsv", train=tsv, valid=tsv, test=tsv)
    assert report["splits"]["train"] == {"rows": 12, "positives": {"click": 6}}  # no row lost as a "header"
    csv_schema = dataclasses.replace(load_schema("criteo_csv"), min_count=1)
    prepare(csv_schema, tmp_path / "csv", train=with_header, valid=with_header, test=with_header)
    a, b = load_prepared(tmp_path / "tsv"), load_prepared(tmp_path / "csv")
    assert a.features == b.features and a.features.num_fields == 39
    assert torch.equal(a.train.categorical, b.train.categorical)
    assert torch.equal(a.train.labels, b.train.labels)
    # I1 of row 0 is missing (filled with 0), of row 1 is 6: floor(ln(6)^2) = 3
    encoder = Encoder.load(tmp_path / "tsv")
    vocab = encoder.vocabularies["I1"].to_pylist()
    assert vocab[a.train.categorical[0, 0] - 1] == "0"
    assert vocab[a.train.categorical[1, 0] - 1] == str(math.floor(math.log(6) ** 2))
    assert rows[1][1] == "6"


def test_criteo_headerless_tsv_bad_row_line_is_counted_from_one(tmp_path):
    rows = criteo_rows()
    rows[2] = rows[2][:30]  # line 3: a row cut short after C16
    tsv = tmp_path / "day_0.tsv"
    tsv.write_text("".join("\t".join(r) + "\n" for r in rows))
    s = load_schema("criteo")
    with pytest.raises(DataError) as error:
        prepare(s, tmp_path / "out", train=tsv, valid=tsv, test=tsv)
    assert str(error.value).startswith(f"{tsv}:3: expected 40 columns, found 30 (no value for field 'C17')")
    report = prepare(dataclasses.replace(s, min_count=1), tmp_path / "out", train=tsv, valid=tsv, test=tsv, on_bad_rows="skip")
    assert report["inputs"][0]["skipped_examples"] == [
        {"line": 3, "reason": "expected 40 columns, found 30 (no value for field 'C17')"}
    ]
    assert report["splits"]["train"]["rows"] == 11
