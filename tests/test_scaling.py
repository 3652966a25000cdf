"""Scaling-law fits (mldcn.studies.scaling): known exponents recovered, form choice, bootstrap intervals."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import mldcn.studies.scaling as scaling
from mldcn.studies.scaling import compare_exponents, fit_form, fit_scaling

X = np.logspace(4, 6, 5)  # 100x span of compute, as a sweep's budgets


def _curves(a: float, b: float, c: float, seeds: int, noise: float, rng: np.random.Generator):
    """Points of y = c + a x^-b, one noisy curve per seed (a per-seed offset and per-point noise)."""
    x, y, s = [], [], []
    for seed in range(seeds):
        offset = rng.normal(0, noise)
        x += list(X)
        y += list(c + a * X ** (-b) + offset + rng.normal(0, noise, len(X)))
        s += [seed] * len(X)
    return np.array(x), np.array(y), np.array(s)


def test_exact_power_law_is_recovered_exactly():
    x = np.logspace(3, 7, 6)
    y = 0.31 + 4.0 * x ** (-0.42)
    params = fit_form("power", x, y).params
    assert params == pytest.approx({"a": 4.0, "b": 0.42, "c": 0.31}, rel=1e-4)


def test_exact_loglinear_is_recovered_exactly():
    # y = 0.9 - 0.05 log10(x): at x = 1e4 it is 0.7, at 1e6 0.6 (by hand)
    params = fit_form("loglinear", [1e4, 1e5, 1e6], [0.7, 0.65, 0.6]).params
    assert params == pytest.approx({"p": 0.9, "q": -0.05})


def test_noisy_seeds_recover_the_known_exponent_within_its_interval():
    # 20 independent sweeps of 5 seeds each: the 95% interval holds the true exponent in
    # (nearly) all of them — a percentile bootstrap over 5 seeds covers a little under 95% —
    # and every point estimate is close
    covered, widths = 0, []
    for sweep in range(20):
        rng = np.random.default_rng(100 + sweep)
        x, y, seeds = _curves(a=3.0, b=0.3, c=0.4, seeds=5, noise=0.0005, rng=rng)
        fit = fit_scaling(x, y, seeds, form="power", resamples=150, random_state=sweep)
        low, high = fit.intervals["b"]
        covered += low <= 0.3 <= high
        widths.append(high - low)
        assert abs(fit.params["b"] - 0.3) < 0.01 and abs(fit.params["c"] - 0.4) < 0.01
        assert fit.rate == fit.params["b"] and fit.seeds == 5
    assert covered >= 17
    assert np.mean(widths) < 0.05  # an interval that says something


def test_aic_prefers_the_form_that_made_the_data():
    rng = np.random.default_rng(1)
    x, y, seeds = _curves(a=50.0, b=0.6, c=0.2, seeds=3, noise=0.0002, rng=rng)  # strongly curved in log x
    assert fit_scaling(x, y, seeds, resamples=20).form == "power"
    line = 0.8 - 0.03 * np.log10(x) + rng.normal(0, 0.002, len(x))  # straight in log x
    fit = fit_scaling(x, line, seeds, resamples=20)
    assert fit.form == "loglinear"
    assert fit.fits["power"].aic > fit.fits["loglinear"].aic  # the third parameter did not pay
    assert fit.rate == pytest.approx(0.03, abs=0.005)  # the fall per decade


def test_a_loss_that_rises_with_compute_gets_the_log_linear_slope_not_a_degenerate_power_law():
    # test logloss of a family that is best at the smallest budget and level above it (as
    # ML-DCN's was on the industrial log): least squares bends c + a x^-b into a step up
    # (a < 0, a large b), which fits closest and is no scaling law; the log-linear slope is
    # one, and its rate (the fall per decade) is negative: minus the least-squares slope of y
    # on log10 x, cov / var worked out directly
    rng = np.random.default_rng(3)
    x = np.tile(X, 3)
    y = np.where(x == X[0], 0.2190, 0.2198) + rng.normal(0, 1e-5, len(x))
    fit = fit_scaling(x, y, np.repeat([0, 1, 2], len(X)), resamples=100)
    assert not fit.fits["power"].proper and fit.fits["power"].params["a"] < 0
    assert fit.fits["power"].aic < fit.fits["loglinear"].aic  # the improper fit was closer, and still not taken
    u = np.log10(x)
    slope = np.mean((u - u.mean()) * (y - y.mean())) / np.var(u)
    assert fit.form == "loglinear" and fit.rate == pytest.approx(-slope) and fit.rate < 0
    # a falling power law is proper; so is every log-linear fit
    assert fit_form("power", X, 0.31 + 4.0 * X ** (-0.42)).proper
    assert fit_form("loglinear", X, 0.2 + 0.001 * np.log10(X)).proper


def test_exponents_that_differ_are_told_apart_and_equal_ones_are_not():
    rng = np.random.default_rng(2)
    slow = fit_scaling(*_curves(2.0, 0.2, 0.4, 5, 0.0005, rng), form="power", resamples=300)
    fast = fit_scaling(*_curves(2.0, 0.5, 0.4, 5, 0.0005, rng), form="power", resamples=300)
    same = fit_scaling(*_curves(2.0, 0.2, 0.4, 5, 0.0005, rng), form="power", resamples=300)
    differ = compare_exponents(fast, slow)
    assert differ.difference == pytest.approx(0.3, abs=0.08) and differ.p_value < 0.05
    assert differ.low > 0
    assert compare_exponents(slow, same).p_value > 0.05
    with pytest.raises(ValueError, match="different forms"):
        compare_exponents(slow, fit_scaling(X, 0.9 - 0.01 * np.log10(X), [0] * 5, form="loglinear"))


def test_one_seed_has_no_interval():
    fit = fit_scaling(X, 0.4 + X ** -0.3, [0] * len(X), form="power")
    assert all(np.isnan(v).all() for v in fit.intervals.values())
    assert fit.to_dict()["seeds"] == 1


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="x must be > 0"):
        fit_form("power", [0, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="3 distinct x"):
        fit_form("power", [1, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="2 seeds for 3 points"):
        fit_scaling([1, 2, 3], [1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="form must be"):
        fit_form("cubic", [1, 2, 3], [1, 2, 3])


def test_docstring_example():
    assert doctest.testmod(scaling).failed == 0
