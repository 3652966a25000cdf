"""Significance tests for comparing models: paired t-test over seeds, DeLong's test.

* Seeds: the same seeds train both models on the same data, so their test AUCs
  pair up; ``paired_t`` tests whether the mean paired difference is zero.
* One test set: two models' AUCs on the same test rows are correlated;
  ``delong`` (DeLong, DeLong & Clarke-Pearson 1988, in the O(n log n) form of
  Sun & Xu 2014) tests whether they differ, from the predictions of one seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mldcn.extras import require
from mldcn.metrics import average_ranks


def _scipy_stats():
    """scipy.stats (the ``stats`` extra), imported when a test is computed."""
    return require("scipy.stats", "the significance tests of mldcn scale and ablate")


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of ``a`` − ``b`` over seeds."""

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float


def paired_t(a, b, confidence: float = 0.95) -> PairedResult:
    """Paired t-test of ``mean(a - b) == 0`` with a two-sided confidence interval.

    With fewer than 2 pairs the interval and p-value are NaN.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    diff = a - b
    n = diff.size
    mean = float(diff.mean()) if n else float("nan")
    if n < 2:
        return PairedResult(n, mean, float("nan"), float("nan"), float("nan"))
    sd = float(diff.std(ddof=1))
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return PairedResult(n, mean, mean, mean, p)
    se = sd / math.sqrt(n)
    t = mean / se
    stats = _scipy_stats()
    p = float(2 * stats.t.sf(abs(t), df=n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * se
    return PairedResult(n, mean, mean - half, mean + half, p)


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    z: float
    p_value: float

    @property
    def difference(self) -> float:
        return self.auc_a - self.auc_b


def delong(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong's test for two correlated ROC AUCs on the same examples (two-sided).

    With m positives and n negatives, each model's AUC has structural components
    V10 (per positive) and V01 (per negative), computed from mid-ranks; the
    variance of AUC_a − AUC_b is ``(S10 / m + S01 / n)`` contracted with (1, −1).
    """
    y = np.asarray(labels).ravel() > 0.5
    scores = np.vstack([np.asarray(scores_a, np.float64).ravel(), np.asarray(scores_b, np.float64).ravel()])
    if scores.shape[1] != y.size:
        raise ValueError("labels and scores differ in length")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least 2 positives and 2 negatives")
    v10, v01, aucs = [], [], []
    for s in scores:
        tz = average_ranks(s)
        tx = average_ranks(s[y])
        ty = average_ranks(s[~y])
        aucs.append((tz[y].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[y] - tx) / n)
        v01.append(1.0 - (tz[~y] - ty) / m)
    s10 = np.cov(np.vstack(v10))
    s01 = np.cov(np.vstack(v01))
    cov = s10 / m + s01 / n
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    difference = aucs[0] - aucs[1]
    if variance <= 0:
        z = 0.0 if difference == 0 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    p = float(2 * _scipy_stats().norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), float(z), p)
