"""Binary-classification metrics for CTR: AUC, logloss, normalised entropy, calibration.

All take labels in {0, 1} and predicted probabilities, as numpy arrays.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _as_arrays(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {p.size}")
    if y.size == 0:
        raise ValueError("no examples to score")
    return y, p


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted element belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    run = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = (starts + ends + 1)[run] / 2.0  # mean of ranks start+1 .. end
    return ranks


def auc(labels, probs) -> float:
    """Exact ROC AUC in O(n log n); tied scores count one half (Mann-Whitney U).

        AUC = (Σ_{i positive} rank_i − n⁺(n⁺+1)/2) / (n⁺ n⁻)
    """
    y, p = _as_arrays(labels, probs)
    positives = y > 0.5
    n_pos = int(positives.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined when only one class is present")
    ranks = average_ranks(p)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probs) -> float:
    """Mean binary cross-entropy, with probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _as_arrays(labels, probs)
    p = np.clip(p, EPS, 1.0 - EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def normalized_entropy(labels, probs) -> float:
    """Logloss divided by the entropy of the base rate (He et al., ADKDD 2014).

        NE = logloss / −(p̄ log p̄ + (1 − p̄) log(1 − p̄)),   p̄ = mean label

    1.0 means no better than predicting the average CTR; lower is better.
    """
    y, p = _as_arrays(labels, probs)
    rate = float(np.clip(y.mean(), EPS, 1.0 - EPS))
    base = -(rate * np.log(rate) + (1.0 - rate) * np.log(1.0 - rate))
    return float(logloss(y, p) / base)


def calibration(labels, probs) -> float:
    """Mean prediction / mean label: 1.0 is calibrated, > 1 over-predicts."""
    y, p = _as_arrays(labels, probs)
    return float(p.mean() / max(y.mean(), EPS))


def binary_metrics(labels, probs) -> dict[str, float]:
    """AUC, logloss, normalised entropy and calibration in one dict."""
    return {
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        "ne": normalized_entropy(labels, probs),
        "calibration": calibration(labels, probs),
    }
