"""The industrial-shape click log: shape, reproducibility, disk format, labels, ceilings, refusals, CLI."""

from __future__ import annotations

import dataclasses
import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

import mldcn.data.industrial as industrial
from mldcn.cli import main
from mldcn.config import ConfigError, from_dict
from mldcn.data.encode import FORMAT_VERSION
from mldcn.data.industrial import (
    IndustrialClickLog,
    IndustrialConfig,
    make_industrial,
    power_law_rank,
    write_industrial,
)
from mldcn.data.prepared import load_prepared
from mldcn.serve.artifact import load_artifact

# a small log: 1,000-id users, rows in chunks of 1,000 so that splits cross chunk boundaries
TINY = IndustrialConfig(train_rows=2_500, valid_rows=1_200, test_rows=700, seed=3, largest_vocab=1_000)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(industrial, "CHUNK_ROWS", 1_000)
    monkeypatch.setattr(industrial, "CALIBRATION_ROWS", 4_000)


def splits(dataset):
    return {name: getattr(dataset, name) for name in ("train", "valid", "test")}


def assert_batches_equal(a, b) -> None:
    for name in ("categorical", "numeric", "sequence", "labels", "weights"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name


def binaries(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.bin"))}


# ---------------------------------------------------------------------------- shape


def test_the_default_log_has_the_promised_shape():
    log = IndustrialClickLog(IndustrialConfig())
    features = log.features
    assert features.num_fields >= 40 and features.num_fields == 48
    assert features.task_names == ("click", "good_click")
    sizes = {f.name: f.vocab_size for f in (*features.categorical, *features.sequence)}
    assert sizes["user_id"] == 1_000_000 == max(sizes.values())
    assert 2_000_000 <= sum(sizes.values()) <= 3_000_000
    assert len(features.sequence) == 2 and features.sequence_length == 10
    assert {"segment_x_category", "country_x_advertiser", "user_x_advertiser"} <= set(sizes)


def test_ten_million_user_ids_without_a_ten_million_row_table(monkeypatch):
    config = IndustrialConfig(largest_vocab=10_000_000, train_rows=1_000, valid_rows=1_000, test_rows=1_000)
    log = IndustrialClickLog(config)
    assert log.features.categorical[0].vocab_size == 10_000_000
    assert log._table.shape[0] < 200_000  # compositional teacher embeddings: about √V rows per large field
    rows = log.chunk("train", 0)
    assert rows.categorical[:, 0].max() >= 1_000_000  # the long tail is reached
    assert np.isfinite(rows.probability).all()


def test_ids_are_in_range_and_sequences_are_padded_after_their_items():
    log = IndustrialClickLog(TINY)
    rows = log.chunk("train", 0)
    features = log.features
    high = np.array([f.vocab_size for f in features.categorical])
    assert rows.categorical.dtype == np.int32 and (rows.categorical >= 0).all() and (rows.categorical < high).all()
    assert rows.sequence.dtype == np.int32
    for j, field in enumerate(features.sequence):
        ids = rows.sequence[:, j]  # [n, L]
        assert (ids >= 0).all() and (ids < field.vocab_size).all()
        present = ids > 0
        count = present.sum(axis=1)
        assert (present == (np.arange(field.max_len) < count[:, None])).all(), "items first, then padding 0"
        assert count.min() == 0 and count.max() == field.max_len  # variable length, both ends reached
    assert rows.numeric.dtype == np.float32 and np.isfinite(rows.numeric).all()
    noise = rows.numeric[:, [f.name for f in features.numeric].index("session_depth")]  # per row: N(0, 1)
    assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1


def test_attributes_are_functions_of_their_user_and_ad():
    log = IndustrialClickLog(dataclasses.replace(TINY, largest_vocab=300))  # few users, many repeats
    rows = log.chunk("train", 0)
    names = log.categorical_names
    table = rows.categorical
    for parent, children in {
        "user_id": ["age_bucket", "gender", "city", "region", "country", "device_model", "os", "segment"],
        "ad_id": ["campaign_id", "advertiser_id", "category", "vertical", "creative_type", "landing_domain"],
        "city": ["region", "country", "language"],
        "campaign_id": ["advertiser_id", "category"],
    }.items():
        key = table[:, names.index(parent)]
        for child in children:
            value = table[:, names.index(child)]
            for k in np.unique(key)[:50]:
                assert len(np.unique(value[key == k])) == 1, f"{child} is not a function of {parent}"
    ad, age = table[:, names.index("ad_id")], rows.numeric[:, [f.name for f in log.features.numeric].index("ad_age")]
    for k in np.unique(ad)[:50]:
        assert len(np.unique(age[ad == k])) == 1  # a numeric without noise: the ad's own value
    # hashed crosses are functions of their two fields
    pair = table[:, names.index("user_id")].astype(np.int64) * 10_000 + table[:, names.index("advertiser_id")]
    cross = table[:, names.index("user_x_advertiser")]
    for k in np.unique(pair)[:50]:
        assert len(np.unique(cross[pair == k])) == 1


def test_power_law_ranks_follow_the_law():
    u = np.random.default_rng(0).random(400_000)
    size, exponent = 50, 1.2
    ranks = power_law_rank(u, size, exponent)
    assert ranks.min() == 0 and ranks.max() == size - 1
    edges = np.arange(1, size + 2, dtype=np.float64) ** (1 - exponent)  # ∫ x^-a over [r+1, r+2]
    expected = (edges[:-1] - edges[1:]) / (edges[0] - edges[-1])
    observed = np.bincount(ranks, minlength=size) / u.size
    np.testing.assert_allclose(observed[:10], expected[:10], rtol=0.03)
    assert power_law_rank(np.array([0.0, 0.999999]), 10_000_000, 1.05).tolist()[0] == 0


def test_docstring_examples():
    result = doctest.testmod(industrial, verbose=False, report=False)
    assert result.attempted >= 2 and result.failed == 0


# ---------------------------------------------------------------------------- reproducibility


def test_same_seed_same_bytes_and_another_seed_other_bytes(tmp_path):
    write_industrial(TINY, tmp_path / "a", workers=1)
    write_industrial(TINY, tmp_path / "b", workers=2)  # made in parallel: the same rows
    write_industrial(dataclasses.replace(TINY, seed=4), tmp_path / "c")
    a, b, c = (binaries(tmp_path / name) for name in "abc")
    assert set(a) == {f"{s}/{f}.bin" for s in ("train", "valid", "test") for f in ("categorical", "numeric", "labels", "sequence")}
    assert a == b
    assert all(a[name] != c[name] for name in a)


def test_a_chunk_on_its_own_equals_that_chunk_in_the_whole():
    whole = make_industrial(TINY, workers=1)
    alone = IndustrialClickLog(TINY).chunk("train", 2)  # a fresh log, only chunk 2: rows 2000..2499 of train
    part = whole.train.rows(2_000, 2_500)
    np.testing.assert_array_equal(part.categorical.numpy(), alone.categorical[:500])
    np.testing.assert_array_equal(part.sequence.numpy(), alone.sequence[:500])
    np.testing.assert_array_equal(part.numeric.numpy(), alone.numeric[:500])
    np.testing.assert_array_equal(part.labels.numpy(), alone.labels[:500])
    # a smaller log is a prefix of a larger one; splits are separate streams
    shorter = make_industrial(dataclasses.replace(TINY, train_rows=1_700), workers=2)
    assert_batches_equal(shorter.train, whole.train.rows(0, 1_700))
    assert not torch.equal(whole.valid.categorical[:700], whole.test.categorical)


def test_write_then_load_prepared_equals_make_industrial(tmp_path):
    report = write_industrial(TINY, tmp_path / "log")
    loaded, made = load_prepared(tmp_path / "log"), make_industrial(TINY)
    assert loaded.features == made.features
    for name in ("train", "valid", "test"):
        assert_batches_equal(getattr(loaded, name), getattr(made, name))
    assert loaded.info["positive_rate"] == made.info["positive_rate"] == report["positive_rate"]
    assert made.info["ceiling"] == report["ceiling"]
    assert made.info["source"] == "industrial" and made.info["train_rows"] == 2_500
    feature_map = json.loads((tmp_path / "log" / "feature_map.json").read_text())
    assert feature_map["format_version"] == FORMAT_VERSION == industrial.FORMAT_VERSION
    assert feature_map["schema"] == {"name": "industrial", "weight": None}
    assert feature_map["rows"] == {"train": 2_500, "valid": 1_200, "test": 700}
    generator = feature_map["generator"]
    assert from_dict(IndustrialConfig, generator["config"]) == TINY
    assert generator["ceiling"] == report["ceiling"] and generator["positive_rate"] == report["positive_rate"]
    assert report["bytes"] == sum(p.stat().st_size for p in (tmp_path / "log").rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- labels and ceilings


def test_labels_the_true_probability_and_the_rates():
    config = dataclasses.replace(TINY, train_rows=20_000, base_ctr=0.05, good_click_rate=0.3)
    log = IndustrialClickLog(config)
    parts = list(log.chunks("train"))
    labels = np.concatenate([p.labels for p in parts])
    prob = np.concatenate([p.probability for p in parts])
    assert set(np.unique(labels)) == {0.0, 1.0}
    assert (labels[:, 1] <= labels[:, 0]).all(), "a good click is a click"
    assert (prob[:, 1] <= prob[:, 0]).all()
    click_rate = labels[:, 0].mean()
    assert abs(click_rate - 0.05) < 0.008 and abs(prob[:, 0].mean() - 0.05) < 0.005
    assert abs(labels[:, 1].sum() / labels[:, 0].sum() - 0.3) < 0.05
    # the true probability is a function of the written row alone: the ceiling is reachable
    first = parts[0]
    np.testing.assert_allclose(log.probability(first.categorical, first.numeric, first.sequence), first.probability)


def test_the_reported_ceiling_is_the_auc_and_logloss_of_the_true_probability():
    config = dataclasses.replace(TINY, train_rows=30_000)
    dataset = make_industrial(config)
    log = IndustrialClickLog(config)
    prob = np.concatenate([p.probability for p in log.chunks("train")])
    labels = dataset.train.labels.numpy()
    for t, task in enumerate(("click", "good_click")):
        reported = dataset.info["ceiling"]["train"][task]
        assert reported["auc"] == pytest.approx(roc_auc_score(labels[:, t], prob[:, t]), abs=1e-4)
        assert reported["logloss"] == pytest.approx(log_loss(labels[:, t], prob[:, t]), rel=1e-9)
        assert 0.65 < reported["auc"] < 0.95
        assert dataset.info["positive_rate"]["train"][task] == pytest.approx(labels[:, t].mean())


def test_each_component_has_its_stated_std():
    config = dataclasses.replace(TINY, first_order=0.3, deep=1.2, high_order=0.5)
    log = IndustrialClickLog(config)
    rows = log.chunk("valid", 0)
    parts = log._components(rows.categorical, rows.numeric, rows.sequence) * log._scales  # [n, T, 3]
    np.testing.assert_allclose(parts.std(axis=0), [[0.3, 1.2, 0.5]] * 2, rtol=0.15)


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"train_rows": -5}, "train_rows must be > 0"),
        ({"largest_vocab": 1}, "largest_vocab must be in [2"),
        ({"largest_vocab": 2**31}, "int32"),
        ({"sequence_length": 0}, "multi-valued fields need at least one position"),
        ({"base_ctr": 1.0}, "base_ctr must be in (0, 1)"),
        ({"good_click_rate": 0.0}, "good_click_rate must be in (0, 1)"),
        ({"user_fields": 14}, "user_fields: the group has 13 fields"),
        ({"numeric_fields": -1}, "numeric_fields must be >= 0"),
        ({"teacher_hidden": ()}, "at least one hidden layer"),
        ({"min_order": 1}, "2 <= min_order <= max_order"),
        ({"user_fields": 1, "ad_fields": 1, "context_fields": 0, "cross_fields": 0, "numeric_fields": 0,
          "sequence_fields": 0}, "max_order 4: a product takes distinct fields, the log has 2"),
        ({**{key: 0 for key in industrial._GROUPS}}, "at least one field"),
    ],
)  # fmt: skip
def test_impossible_settings_are_refused_with_the_reason(change, reason):
    with pytest.raises(ConfigError, match=None) as error:
        dataclasses.replace(TINY, **change)
    assert reason in str(error.value)


def test_a_log_without_sequences_or_numerics_still_works():
    config = dataclasses.replace(TINY, sequence_fields=0, sequence_length=0, numeric_fields=0, cross_fields=2)
    dataset = make_industrial(config)
    assert dataset.train.sequence is None and dataset.features.num_fields == 35
    assert dataset.info["ceiling"]["test"]["click"]["auc"] > 0.5


def test_refuses_to_replace_a_directory_that_is_not_a_log(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an industrial log"):
        write_industrial(TINY, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    write_industrial(TINY, tmp_path / "log")
    write_industrial(dataclasses.replace(TINY, seed=9), tmp_path / "log")  # an earlier log is replaced
    assert json.loads((tmp_path / "log" / "feature_map.json").read_text())["generator"]["config"]["seed"] == 9


def test_an_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    write_industrial(TINY, tmp_path / "log")
    before = binaries(tmp_path / "log")
    calls = []

    def interrupted(self, split, index):
        calls.append(index)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return original(self, split, index)

    original = IndustrialClickLog.chunk
    monkeypatch.setattr(IndustrialClickLog, "chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_industrial(dataclasses.replace(TINY, seed=5), tmp_path / "log", workers=1)
    assert binaries(tmp_path / "log") == before  # the earlier log, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]  # no temporary folder left
    with pytest.raises(KeyboardInterrupt):
        write_industrial(TINY, tmp_path / "new", workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]


# ---------------------------------------------------------------------------- the command


TINY_FLAGS = ["--train-rows", "3000", "--valid-rows", "1000", "--test-rows", "1000", "--largest-vocab", "1000"]


def test_synth_writes_a_log_that_train_trains_on(tmp_path, capsys):
    out = tmp_path / "log"
    assert main(["synth", str(out), *TINY_FLAGS, "--seed", "2", "--set", "base_ctr=0.2"]) == 0
    printed = capsys.readouterr().out
    assert "rows/s" in printed and "MiB" in printed and "click ceiling AUC" in printed and "good_click" in printed
    dataset = load_prepared(out)
    assert len(dataset.train) == 3_000 and dataset.features.task_names == ("click", "good_click")
    generator = json.loads((out / "feature_map.json").read_text())["generator"]
    assert generator["config"]["seed"] == 2 and generator["config"]["base_ctr"] == 0.2

    run = tmp_path / "run"
    main(["train", "--data", str(out), "--model", "lr", "--epochs", "1", "--batch-size", "512", "--quiet", "--out", str(run)])
    result = json.loads((run / "result.json").read_text())
    assert set(result["test"]) == {"click", "good_click"}
    assert all(0.0 <= result["test"][task]["auc"] <= 1.0 for task in ("click", "good_click"))


def test_train_on_a_generated_log_exits_cleanly_with_an_artifact(tmp_path):
    out, run = tmp_path / "log", tmp_path / "run"
    assert main(["synth", str(out), *TINY_FLAGS]) == 0
    code = main(["train", "--data", str(out), "--model", "lr", "--epochs", "1", "--quiet", "--out", str(run)])
    assert code == 0 and (run / "model" / "artifact.json").is_file()
    artifact = load_artifact(run)  # takes encoded ids, like a synthetic-data model
    assert artifact.encoder is None and artifact.features.task_names == ("click", "good_click")


def test_synth_refuses_a_bad_setting_with_the_reason(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "log"), "--set", "base_ctr=1.5"]) == 2
    assert "base_ctr must be in (0, 1)" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "log"), "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "log").exists()
