"""Several labels per row: schemas with a list of labels, each by its rule, through prepare to training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mldcn.config import ConfigError
from mldcn.data.prepare import SplitConfig, prepare
from mldcn.data.prepared import load_prepared
from mldcn.data.readers import DataError, ReadStats, read_chunks
from mldcn.data.schema import load_schema, schema_from_dict

ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "adult_census" / "adult.csv"

ROWS = """\
income,marital,hours,rating,city
>50K,Never-married,40,5,Paris
<=50K,Married-civ-spouse,30,2,Lyon
>50K,Divorced,55,4,Paris
<=50K,Never-married,20,3,Nice
"""
SCHEMA = {
    "name": "people",
    "labels": [
        {"name": "rich", "source": "income", "equals": ">50K"},
        {"name": "single", "source": "marital", "in": ["Never-married", "Divorced"]},
        {"name": "liked", "source": "rating", "threshold": 3, "weight": 0.5},
    ],
    "categorical": [{"name": "city"}],
    "numeric": [{"name": "hours"}],
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def labels_of(path: Path, schema, on_bad_rows="error") -> tuple[np.ndarray, ReadStats]:
    stats = ReadStats(str(path))
    chunks = list(read_chunks(path, schema, on_bad_rows, stats))
    return np.concatenate([c.labels for c in chunks]), stats


def test_each_label_follows_its_rule(tmp_path):
    labels, _ = labels_of(write(tmp_path / "p.csv", ROWS), schema_from_dict(SCHEMA))
    # rich: income == ">50K"; single: marital in [Never-married, Divorced]; liked: rating > 3
    np.testing.assert_array_equal(labels, [[1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    assert labels.dtype == np.float32


def test_the_single_label_form_is_the_one_task_case():
    old = schema_from_dict({"label": {"name": "clicked"}, "categorical": [{"name": "ad"}]})
    new = schema_from_dict({"labels": [{"name": "clicked"}], "categorical": [{"name": "ad"}]})
    assert old == new and [label.name for label in old.labels] == ["clicked"]
    default = schema_from_dict({"categorical": [{"name": "ad"}]})
    assert [label.column for label in default.labels] == ["label"]
    assert schema_from_dict(old.to_dict()) == old  # the form saved in feature_map.json reads back


@pytest.mark.parametrize(
    "change, message",
    [
        ({"categorical": [{"name": "city"}, {"name": "marital"}]}, "column 'marital' is label 'single' and also feature 'marital'"),
        ({"numeric": [{"name": "rating"}]}, "column 'rating' is label 'liked' and also feature 'rating'"),
        ({"labels": [{"name": "a", "equals": "x", "threshold": 1}]}, "one rule"),
        ({"labels": [{"name": "a"}, {"name": "a", "source": "b"}]}, "duplicate label names"),
        ({"labels": []}, "non-empty list"),
        ({"label": {"name": "a"}, "labels": [{"name": "b"}]}, "not both"),
        ({"labels": [{"name": "a", "is": "x"}]}, "unknown key"),
    ],
)
def test_bad_label_declarations_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        schema_from_dict({**SCHEMA, **change})


def test_a_missing_or_unreadable_label_is_a_bad_row(tmp_path):
    text = ROWS + ">50K,,40,5,Paris\n" + "<=50K,Widowed,40,good,Paris\n"  # lines 6 and 7
    path = write(tmp_path / "bad.csv", text)
    schema = schema_from_dict(SCHEMA)
    with pytest.raises(DataError, match=r"bad\.csv:6: field 'marital': missing label 'single'"):
        labels_of(path, schema)
    labels, stats = labels_of(path, schema, on_bad_rows="skip")
    assert (stats.rows_read, stats.rows_kept, stats.rows_skipped) == (6, 4, 2)
    assert [(b.line, b.reason) for b in stats.examples] == [
        (6, "field 'marital': missing label 'single'"),
        (7, "field 'rating': label 'good' is not a number"),
    ]
    assert labels.shape == (4, 3)


def test_prepare_writes_one_label_column_per_task(tmp_path):
    header, *rows = ROWS.splitlines(keepends=True)
    path = write(tmp_path / "p.csv", header + "".join(rows) * 30)
    schema = schema_from_dict(SCHEMA)
    report = prepare(schema, tmp_path / "out", input=path, split=SplitConfig(kind="random", valid_fraction=0.2, test_fraction=0.2))
    data = load_prepared(tmp_path / "out")
    assert data.features.task_names == ("rich", "single", "liked")
    assert [t.weight for t in data.features.tasks] == [1.0, 1.0, 0.5]
    assert data.train.labels.shape == (report["splits"]["train"]["rows"], 3)
    total = {task: sum(s["positives"][task] for s in report["splits"].values()) for task in data.features.task_names}
    assert total == {"rich": 60, "single": 90, "liked": 60}  # 2, 3 and 2 of every 4 rows


@pytest.mark.skipif(not ADULT.exists(), reason="Adult census not found in ../shared/data")
def test_the_adult_schema_gives_the_census_tasks(tmp_path):
    schema = load_schema("adult")
    assert [label.name for label in schema.labels] == ["income", "never_married"]
    assert "marital-status" not in [c.column for c in (*schema.categorical, *schema.numeric)]
    report = prepare(schema, tmp_path / "adult", input=ADULT, split=SplitConfig(kind="random"))
    assert report["rows_read"] == report["rows_written"] == 48_842
    positives = {task: sum(s["positives"][task] for s in report["splits"].values()) for task in ("income", "never_married")}
    assert positives == {"income": 11_687, "never_married": 16_117}  # SOURCE.md: 23.9 % and 33.0 %


WEIGHTED = """\
clicked,ad,w
1,a,1
0,b,10
0,a,0
1,b,2.5
"""


def test_a_weight_column_weights_each_rows_loss(tmp_path):
    import torch

    from mldcn.batch import Batch
    from mldcn.train.loop import task_loss

    schema = schema_from_dict({"label": {"name": "clicked"}, "categorical": [{"name": "ad"}], "weight": "w"})
    path = write(tmp_path / "w.csv", WEIGHTED)
    stats = ReadStats(str(path))
    (chunk,) = read_chunks(path, schema, "error", stats)
    np.testing.assert_array_equal(chunk.weights, [1, 10, 0, 2.5])
    prepare(schema, tmp_path / "out", train=path, valid=path, test=path)
    train = load_prepared(tmp_path / "out").train
    np.testing.assert_array_equal(train.weights.numpy(), [1, 10, 0, 2.5])
    # each row's BCE times its weight: a weight-0 row adds nothing, weight 10 counts ten times
    logits = torch.tensor([[0.3], [-1.0], [2.0], [0.5]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, train.labels, reduction="none")[:, 0]
    expected = (bce * torch.tensor([1, 10, 0, 2.5])).sum()
    assert task_loss(logits, train, torch.ones(1)) == pytest.approx(expected.item(), rel=1e-6)
    unweighted = Batch(train.categorical, train.numeric, labels=train.labels)
    assert task_loss(logits, unweighted, torch.ones(1)) == pytest.approx(bce.sum().item(), rel=1e-6)


@pytest.mark.parametrize("value, reason", [("", "missing weight"), ("-1", "must be a finite number >= 0"), ("x", "is not a number")])
def test_a_bad_weight_is_a_bad_row(tmp_path, value, reason):
    schema = schema_from_dict({"label": {"name": "clicked"}, "categorical": [{"name": "ad"}], "weight": "w"})
    path = write(tmp_path / "w.csv", WEIGHTED + f"1,a,{value}\n")
    with pytest.raises(DataError, match=f"w.csv:6: field 'w': .*{reason}"):
        list(read_chunks(path, schema))
    with pytest.raises(ConfigError, match="weight column 'ad' is also a feature"):
        schema_from_dict({"label": {"name": "clicked"}, "categorical": [{"name": "ad"}], "weight": "ad"})
