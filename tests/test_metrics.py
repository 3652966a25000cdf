"""Metrics: reference parity with scikit-learn / scipy, and golden cases worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import log_loss, roc_auc_score

from mldcn.metrics import (
    auc,
    average_ranks,
    binary_metrics,
    calibration,
    group_auc,
    logloss,
    normalized_entropy,
)


def random_case(seed: int, n: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.01, 0.99, n)
    labels = (rng.random(n) < probs).astype(np.float32)  # informative, AUC well above 0.5
    return labels, probs


# --- AUC -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_on_random_scores(seed):
    labels, probs = random_case(seed)
    assert auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)


@pytest.mark.parametrize("decimals", [1, 2])
def test_auc_matches_sklearn_on_tied_scores(decimals):
    labels, probs = random_case(3)
    tied = np.round(probs, decimals)  # 1 decimal: ~11 distinct values for 2,000 rows
    assert np.unique(tied).size < 0.1 * tied.size
    assert auc(labels, tied) == pytest.approx(roc_auc_score(labels, tied), abs=1e-12)


def test_auc_of_all_equal_scores_is_one_half():
    labels, _ = random_case(4)
    constant = np.full(labels.size, 0.3)
    assert auc(labels, constant) == 0.5
    assert roc_auc_score(labels, constant) == 0.5


def test_auc_golden_by_hand():
    # positives score {0.8, 0.4}, negatives {0.4, 0.2}; the 4 (pos, neg) pairs:
    #   0.8 > 0.4 → 1,  0.8 > 0.2 → 1,  0.4 = 0.4 → 1/2 (tie),  0.4 > 0.2 → 1
    #   AUC = (1 + 1 + 0.5 + 1) / 4 = 0.875
    # Rank formula: ranks 0.2→1, 0.4,0.4→2.5 each, 0.8→4; positive ranks 4 + 2.5 = 6.5;
    #   (6.5 − 2·3/2) / (2·2) = 3.5 / 4 = 0.875
    labels = [1, 0, 1, 0]
    probs = [0.8, 0.4, 0.4, 0.2]
    assert auc(labels, probs) == 0.875


def test_auc_is_perfect_and_inverted():
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc(labels, [0.4, 0.3, 0.2, 0.1]) == 0.0


# --- ranks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(5).normal(size=500),
        np.round(np.random.default_rng(6).normal(size=500), 1),  # many ties
        np.array([3.0, 1.0, 3.0, 3.0, 2.0, 1.0]),
        np.array([7.0]),
        np.full(10, 2.0),
    ],
    ids=["distinct", "tied", "small", "single", "constant"],
)
def test_average_ranks_match_scipy(values):
    np.testing.assert_array_equal(average_ranks(values), rankdata(values, method="average"))


# --- logloss, NE, calibration ----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_logloss_matches_sklearn(seed):
    labels, probs = random_case(seed)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-12)


def test_logloss_clips_certain_wrong_predictions():
    # p = 0 for a positive is clipped to 1e-7: loss −ln(1e-7) ≈ 16.12, finite
    assert logloss([1.0], [0.0]) == pytest.approx(-math.log(1e-7), rel=1e-9)


def test_normalized_entropy_by_hand():
    labels = [1, 0, 0, 0]
    probs = [0.5, 0.25, 0.25, 0.25]
    # logloss = −(ln 0.5 + 3 ln 0.75) / 4;  base rate p̄ = 1/4
    # base entropy = −(0.25 ln 0.25 + 0.75 ln 0.75)
    loss = -(math.log(0.5) + 3 * math.log(0.75)) / 4
    base = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert logloss(labels, probs) == pytest.approx(loss, rel=1e-12)
    assert normalized_entropy(labels, probs) == pytest.approx(loss / base, rel=1e-12)
    assert normalized_entropy(labels, probs) < 1.0  # better than the base rate


@pytest.mark.parametrize("seed", [0, 1])
def test_normalized_entropy_is_one_for_the_base_rate(seed):
    labels, _ = random_case(seed)
    constant = np.full(labels.size, labels.mean(dtype=np.float64))
    # identical up to float summation order
    assert normalized_entropy(labels, constant) == pytest.approx(1.0, abs=1e-12)


def test_calibration_by_hand():
    # mean(y) = 2/5 = 0.4;  mean(p) = (0.6 + 0.2 + 0.2 + 0.2 + 0.8) / 5 = 0.4 → 1.0
    labels = [1, 0, 0, 0, 1]
    probs = [0.6, 0.2, 0.2, 0.2, 0.8]
    assert calibration(labels, probs) == pytest.approx(1.0, rel=1e-12)
    # halved predictions: mean(p) = 0.2 → 0.2 / 0.4 = 0.5 (under-predicts)
    assert calibration(labels, np.array(probs) / 2) == pytest.approx(0.5, rel=1e-12)
    # mean(y) = 1/4, mean(p) = 0.3 → 0.3 / 0.25 = 1.2 (over-predicts)
    assert calibration([1, 0, 0, 0], [0.3] * 4) == pytest.approx(1.2, rel=1e-12)


def test_binary_metrics_bundle():
    labels, probs = random_case(7)
    metrics = binary_metrics(labels, probs)
    assert set(metrics) == {"auc", "logloss", "ne", "calibration"}
    assert metrics["auc"] == auc(labels, probs)
    assert metrics["logloss"] == logloss(labels, probs)
    assert metrics["ne"] == normalized_entropy(labels, probs)
    assert metrics["calibration"] == calibration(labels, probs)


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize("metric", [auc, logloss, normalized_entropy, calibration])
def test_length_mismatch_raises(metric):
    with pytest.raises(ValueError, match="differ in length"):
        metric([0, 1, 1], [0.2, 0.7])


@pytest.mark.parametrize("metric", [auc, logloss, normalized_entropy, calibration])
def test_empty_input_raises(metric):
    with pytest.raises(ValueError, match="no examples"):
        metric([], [])


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_single_class_auc_raises(label):
    with pytest.raises(ValueError, match="one class"):
        auc([label] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])


def test_group_auc_by_hand():
    # group a: positive 0.9 above both negatives → 1.0; group b: the negative ties the
    # positive → 0.5; group c has one class only and is skipped. Weights 3 and 2.
    labels = [1, 0, 0, 1, 0, 1, 1]
    probs = [0.9, 0.2, 0.4, 0.3, 0.3, 0.5, 0.6]
    groups = ["a", "a", "a", "b", "b", "c", "c"]
    assert group_auc(labels, probs, groups) == pytest.approx((3 * 1.0 + 2 * 0.5) / 5)


def test_group_auc_matches_scikit_learn_per_group():
    rng = np.random.default_rng(3)
    n = 4000
    groups = rng.integers(0, 250, n)
    labels = (rng.random(n) < 0.3).astype(np.float64)
    probs = np.round(rng.random(n) + 0.3 * labels, 2)  # rounded: many ties
    total = weight = 0.0
    for g in np.unique(groups):
        mask = groups == g
        if 0 < labels[mask].sum() < mask.sum():
            total += mask.sum() * roc_auc_score(labels[mask], probs[mask])
            weight += mask.sum()
    assert group_auc(labels, probs, groups) == pytest.approx(total / weight, abs=1e-12)
    assert math.isnan(group_auc([1, 1, 0], [0.1, 0.2, 0.3], [0, 0, 1]))  # no group has both classes
