"""The synthetic click log: reproducibility, chunking, id bounds, Zipf, CTR, the ceiling."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import mldcn.data.synthetic as synthetic
from mldcn.config import ConfigError
from mldcn.data.synthetic import SyntheticClickLog, SyntheticConfig, make_synthetic
from mldcn.features import CategoricalField, NumericField
from mldcn.metrics import auc

SMALL = SyntheticConfig(vocab_sizes=(3, 10, 40, 200), num_numeric=2, seed=7)


def assert_rows_equal(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_same_seed_gives_identical_rows():
    first = SyntheticClickLog(SMALL).rows(100, 1_100)
    second = SyntheticClickLog(SMALL).rows(100, 1_100)
    assert_rows_equal(first, second)


def test_different_seeds_differ():
    a = SyntheticClickLog(SMALL).rows(0, 1_000)
    b = SyntheticClickLog(SyntheticConfig(**{**SMALL.__dict__, "seed": 8})).rows(0, 1_000)
    assert not np.array_equal(a[0], b[0])  # ids
    assert not np.array_equal(a[1], b[1])  # numeric values
    assert not np.allclose(a[2], b[2])  # true probabilities (a different ground truth too)


def test_row_ranges_are_slices_across_chunk_boundaries(monkeypatch):
    # `rows` reads CHUNK_ROWS at call time; a small chunk makes many boundaries cheaply
    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 1_000)
    log = SyntheticClickLog(SMALL)
    n = 4_500
    whole = log.rows(0, n)
    assert [part.shape[0] for part in whole] == [n] * 4
    ranges = [(0, 1_000), (999, 1_001), (1_000, 2_000), (1_500, 3_700), (2_999, 4_500), (4_200, 4_201)]
    for start, stop in ranges:
        part = log.rows(start, stop)
        assert_rows_equal(part, tuple(column[start:stop] for column in whole))
    empty = log.rows(1_234, 1_234)
    assert [part.shape[0] for part in empty] == [0, 0, 0, 0]
    assert empty[0].shape == (0, len(SMALL.vocab_sizes)) and empty[1].shape == (0, SMALL.num_numeric)


def test_the_real_chunk_boundary():
    # once without patching: rows straddling CHUNK_ROWS match the two chunks' pieces
    log = SyntheticClickLog(SMALL)
    b = synthetic.CHUNK_ROWS
    across = log.rows(b - 300, b + 300)
    before, after = log.rows(b - 300, b), log.rows(b, b + 300)
    assert_rows_equal(across, tuple(np.concatenate(pair) for pair in zip(before, after)))


def test_invalid_row_range_raises():
    with pytest.raises(ValueError, match="invalid row range"):
        SyntheticClickLog(SMALL).rows(10, 5)


def test_values_are_in_range():
    categorical, numeric, prob, label = SyntheticClickLog(SMALL).rows(0, 20_000)
    assert categorical.dtype == np.int64 and numeric.dtype == np.float32
    assert (categorical >= 0).all()
    assert (categorical < np.array(SMALL.vocab_sizes)).all()
    # every id of the small vocabularies shows up in 20k rows
    for f, size in enumerate(SMALL.vocab_sizes[:3]):
        assert np.unique(categorical[:, f]).size == size
    assert ((prob > 0) & (prob < 1)).all()
    assert set(np.unique(label)) == {0.0, 1.0}


def test_ids_are_zipf_distributed():
    config = SyntheticConfig(vocab_sizes=(5, 5_000), num_numeric=1)
    categorical = SyntheticClickLog(config).rows(0, 50_000)[0]
    counts = np.bincount(categorical[:, 1], minlength=5_000)
    # P(rank 1) = 1 / Σ_k k^-s ≈ 0.12 for s = 1.05 over 5,000 ids; the median id is at
    # rank ~2,500 with P ≈ 0.12 / 2500^1.05 ≈ 3e-5, i.e. ~1.5 of 50k rows
    top = 1.0 / np.sum(1.0 / np.arange(1, 5_001) ** config.zipf_exponent)
    assert counts.max() / 50_000 == pytest.approx(top, rel=0.05)
    assert counts.max() > 500 * max(np.median(counts), 1.0)


@pytest.mark.parametrize("base_ctr", [0.02, 0.15, 0.5])
def test_mean_true_probability_is_the_base_ctr(base_ctr):
    config = SyntheticConfig(base_ctr=base_ctr, seed=3)
    prob = SyntheticClickLog(config).rows(0, 65_536)[2]
    # The bias is solved exactly (bisection) on a separate calibration sample of
    # 65,536 rows; this independent sample of n = 65,536 rows differs from it only
    # by sampling noise, with std σ_p √(2/n) (σ_p = std of the true probability).
    # 5 of those σ: a false failure has probability < 1e-6.
    tolerance = 5 * prob.std() * math.sqrt(2 / prob.size)
    assert abs(prob.mean() - base_ctr) < tolerance
    assert tolerance < 0.1 * base_ctr  # tight enough to catch a bias off by 10% of the CTR


def test_make_synthetic_ceiling_is_recomputed_from_rows():
    config = SyntheticConfig(train_rows=3_000, valid_rows=1_000, test_rows=2_000, seed=11)
    data = make_synthetic(config)
    assert (len(data.train), len(data.valid), len(data.test)) == (3_000, 1_000, 2_000)
    # the test split is rows 4,000:6,000 of the log, generated afresh
    categorical, numeric, prob, label = SyntheticClickLog(config).rows(4_000, 6_000)
    np.testing.assert_array_equal(data.test.categorical.numpy(), categorical)
    np.testing.assert_array_equal(data.test.numeric.numpy(), numeric)
    np.testing.assert_array_equal(data.test.labels.numpy(), label)
    assert label.shape == prob.shape == (2_000, 1)
    assert data.info["ceiling"]["test"]["click"]["auc"] == pytest.approx(roc_auc_score(label[:, 0], prob[:, 0]), abs=1e-12)
    assert data.info["positive_rate"]["test"]["click"] == pytest.approx(label.mean())
    train_prob = SyntheticClickLog(config).rows(0, 3_000)[2]
    assert data.info["ceiling"]["train"]["click"]["auc"] == pytest.approx(
        roc_auc_score(data.train.labels.numpy()[:, 0], train_prob[:, 0]), abs=1e-12
    )


def test_default_shape_has_a_useful_ceiling():
    config = SyntheticConfig(train_rows=1_000, valid_rows=1_000, test_rows=20_000)
    data = make_synthetic(config)
    ceiling = data.info["ceiling"]["test"]["click"]
    assert ceiling["auc"] > 0.7
    assert ceiling["auc"] == pytest.approx(
        auc(data.test.labels.numpy()[:, 0], SyntheticClickLog(config).rows(2_000, 22_000)[2][:, 0]), abs=1e-12
    )
    # a model can only lose to the truth: the ceiling logloss beats the base rate's
    rate = data.info["positive_rate"]["test"]["click"]
    assert ceiling["logloss"] < -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


TWO_TASKS = SyntheticConfig(
    train_rows=1_000, valid_rows=1_000, test_rows=40_000, tasks=("click", "quality"), task_correlation=0.6,
    task_rates=(0.3,), seed=4,
)  # fmt: skip


def test_a_second_task_leaves_the_first_as_it_was():
    one = SyntheticClickLog(dataclasses.replace(TWO_TASKS, tasks=("click",), task_rates=())).rows(0, 5_000)
    two = SyntheticClickLog(TWO_TASKS).rows(0, 5_000)
    for a, b in zip(one[:2], two[:2]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one[2][:, 0], two[2][:, 0])  # the click probability
    np.testing.assert_array_equal(one[3][:, 0], two[3][:, 0])  # and the click labels


def test_tasks_share_structure_and_have_their_own_part():
    log = SyntheticClickLog(TWO_TASKS)
    categorical, numeric, prob, labels = log.rows(0, 65_536)
    logit = np.log(prob / (1 - prob))
    correlation = np.corrcoef(logit.T)[0, 1]
    assert correlation == pytest.approx(0.6, abs=0.05)  # the shared part, as asked
    tolerance = 5 * prob[:, 1].std() * math.sqrt(2 / len(prob))
    assert abs(prob[:, 1].mean() - 0.3) < tolerance  # the quality task's rate
    assert abs(labels[:, 1].mean() - 0.3) < 0.01
    data = make_synthetic(TWO_TASKS)
    assert data.features.task_names == ("click", "quality")
    for task in ("click", "quality"):  # each task's ceiling, from its own true probabilities
        assert 0.7 < data.info["ceiling"]["test"][task]["auc"] < 1.0
    # a task's truth predicts the other task worse than it predicts its own
    test_labels = data.test.labels.numpy()
    test_prob = log.rows(2_000, 42_000)[2]
    assert auc(test_labels[:, 1], test_prob[:, 0]) < data.info["ceiling"]["test"]["quality"]["auc"] - 0.05


def test_features_match_the_config():
    features = SyntheticClickLog(SMALL).features
    assert features.categorical == tuple(
        CategoricalField(f"c{i}", size) for i, size in enumerate(SMALL.vocab_sizes)
    )
    assert features.numeric == (NumericField("n0"), NumericField("n1"))
    assert features.sequence == ()
    assert features.num_fields == len(SMALL.vocab_sizes) + SMALL.num_numeric


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"base_ctr": 0.0}, "base_ctr"),
        ({"base_ctr": 1.0}, "base_ctr"),
        ({"vocab_sizes": (5,), "num_numeric": 1}, "at least 3 fields"),
        ({"vocab_sizes": (), "num_numeric": 2}, "vocab_sizes|at least 3"),
        ({"train_rows": 0}, "train_rows"),
        ({"vocab_sizes": (5, 0, 7)}, "vocab_sizes"),
        ({"pairwise": -1.0}, "pairwise"),
    ],
)
def test_invalid_config_raises(changes, match):
    with pytest.raises((ValueError, ConfigError), match=match):
        SyntheticConfig(**changes)
