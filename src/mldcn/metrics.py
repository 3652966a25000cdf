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


def group_auc(labels, probs, groups) -> float:
    """gAUC: the AUC within each group (e.g. each user), averaged with the groups'
    impression counts as weights; groups with one class only are skipped.

        gAUC = Σ_g n_g AUC_g / Σ_g n_g   over groups g with positives and negatives

    As :func:`auc`, exact with tied scores counting one half, in O(n log n) for
    all groups together. NaN when no group has both classes.
    """
    y, p = _as_arrays(labels, probs)
    g = np.asarray(groups).ravel()
    if g.shape != y.shape:
        raise ValueError(f"groups and labels differ in length: {g.size} vs {y.size}")
    order = np.lexsort((p, g))  # by group, then by score
    y, p, g = y[order], p[order], g[order]
    n = y.size
    new_group = np.r_[True, g[1:] != g[:-1]]
    group = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    new_tie = new_group | np.r_[True, p[1:] != p[:-1]]
    tie_start = np.flatnonzero(new_tie)
    tie_end = np.r_[tie_start[1:], n]
    mean_rank = (tie_start + tie_end + 1) / 2.0  # 1-based global ranks averaged over each tie
    rank = mean_rank[np.cumsum(new_tie) - 1] - group_start[group]  # 1-based rank within the group
    positive = y > 0.5
    count = np.bincount(group).astype(np.float64)
    n_pos = np.bincount(group, weights=positive.astype(np.float64))
    n_neg = count - n_pos
    rank_sum = np.bincount(group, weights=np.where(positive, rank, 0.0))
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return float("nan")
    aucs = (rank_sum[both] - n_pos[both] * (n_pos[both] + 1) / 2.0) / (n_pos[both] * n_neg[both])
    return float(np.sum(aucs * count[both]) / np.sum(count[both]))


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
