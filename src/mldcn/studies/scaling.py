"""Scaling laws: held-out loss against compute (or examples), fitted per family with intervals over seeds.

Two forms are fitted to points ``(x, y)`` — x the interaction FLOPs per example (or
the examples seen), y a held-out loss (logloss or normalised entropy):

* **power law with an irreducible term** ``y = c + a · x^(-b)`` (3 parameters;
  ``b`` is the exponent: how fast the loss falls with x, ``c`` the loss no x removes);
* **log-linear** ``y = p + q · log10(x)`` (2 parameters; ``-q`` is the fall of the
  loss per decade of x).

:func:`fit_scaling` fits both by least squares, reports each one's residual sum
of squares and AIC (Gaussian errors: ``n log(RSS/n) + 2k``, so the third
parameter must pay for itself), and picks the lower AIC unless a form is asked
for — among the *proper* fits only: a power law is one when it describes a loss
that falls with x towards a floor (``a > 0``, ``c ≥ 0``). Where the loss is flat
or rises with x the least-squares power law degenerates (a step, or ``b → 0``
with a negative floor) and its exponent means nothing; the log-linear slope is
always defined, and its sign says which way the loss goes. Its intervals come
from a **bootstrap over seeds**: the seeds (a seed's points are one curve, kept together) are resampled with replacement, the chosen
form is refitted, and the percentile interval of each parameter is reported;
:func:`compare_exponents` tests whether two families' exponents (or slopes)
differ from the same resamples.

The fit is done in the log of x, scaled to [0, 1]; ``a`` is reported for x in its
own units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mldcn.extras import require

Form = Literal["power", "loglinear"]
FORMS: tuple[Form, ...] = ("power", "loglinear")
#: the parameter that measures how fast the loss falls, per form, and its sign: the rate is
#: b for the power law, −q (the fall per decade) for the log-linear form; larger is faster
RATE = {"power": ("b", 1.0), "loglinear": ("q", -1.0)}


@dataclass(frozen=True)
class FormFit:
    """One form fitted to all points."""

    form: Form
    params: dict[str, float]
    rss: float
    aic: float
    n: int

    def predict(self, x) -> np.ndarray:
        return predict(self.form, self.params, np.asarray(x, dtype=float))

    @property
    def proper(self) -> bool:
        """A power law is a scaling law only for a loss falling with x to a floor (a > 0, c ≥ 0);
        a log-linear fit always is one."""
        return self.form != "power" or (self.params["a"] > 0 and self.params["c"] >= 0)


@dataclass(frozen=True)
class ScalingFit:
    """The chosen form, its parameters with bootstrap intervals, and every form's goodness of fit.

    Attributes:
        form: the form used (the lower AIC unless one was asked for).
        params: its parameters fitted to all points.
        intervals: ``{name: (low, high)}``, the ``confidence`` percentile interval over
            ``resamples`` bootstrap resamples of the seeds (NaN with fewer than 2 seeds).
        draws: ``{name: array}``, the bootstrap values (for :func:`compare_exponents`).
        fits: every form's :class:`FormFit` (RSS, AIC), chosen or not.
    """

    form: Form
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    draws: dict[str, np.ndarray] = field(repr=False)
    fits: dict[str, FormFit]
    seeds: int
    confidence: float

    @property
    def rate(self) -> float:
        """How fast the loss falls: the power law's exponent b, or −q (per decade) for the log-linear form."""
        name, sign = RATE[self.form]
        return sign * self.params[name]

    @property
    def rate_draws(self) -> np.ndarray:
        """The bootstrap values of :attr:`rate`."""
        name, sign = RATE[self.form]
        return sign * self.draws[name]

    @property
    def rate_interval(self) -> tuple[float, float]:
        """The percentile interval of :attr:`rate` (NaN with fewer than 2 seeds)."""
        low, high = self.intervals[RATE[self.form][0]]
        return (low, high) if RATE[self.form][1] > 0 else (-high, -low)

    def predict(self, x) -> np.ndarray:
        return predict(self.form, self.params, np.asarray(x, dtype=float))

    def to_dict(self) -> dict:
        return {
            "form": self.form,
            "params": self.params,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "rss": {f: fit.rss for f, fit in self.fits.items()},
            "aic": {f: fit.aic for f, fit in self.fits.items()},
            "seeds": self.seeds,
            "confidence": self.confidence,
        }


def predict(form: Form, params: dict[str, float], x: np.ndarray) -> np.ndarray:
    if form == "power":
        return params["c"] + params["a"] * x ** (-params["b"])
    return params["p"] + params["q"] * np.log10(x)


def fit_form(form: Form, x, y) -> FormFit:
    """Least-squares fit of one form to the points ``(x, y)`` (x > 0)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if (x <= 0).any() or not np.isfinite(y).all():
        raise ValueError("x must be > 0 and y finite")
    if form == "loglinear":
        params = _fit_loglinear(x, y)
        k = 2
    elif form == "power":
        params = _fit_power(x, y)
        k = 3
    else:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    residual = y - predict(form, params, x)
    rss = float(residual @ residual)
    n = len(x)
    aic = n * math.log(max(rss, 1e-300) / n) + 2 * k
    return FormFit(form, params, rss, aic, n)


def _fit_loglinear(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if len(np.unique(x)) < 2:
        raise ValueError("a log-linear fit needs at least 2 distinct x")
    q, p = np.polyfit(np.log10(x), y, 1)
    return {"p": float(p), "q": float(q)}


def _fit_power(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``y = c + a x^-b`` with b > 0: for each b on a grid the best (a, c) is linear least
    squares; the best grid b is then refined by bounded scalar minimisation."""
    if len(np.unique(x)) < 3:
        raise ValueError("a power law with an irreducible term needs at least 3 distinct x")
    optimize = require("scipy.optimize", "the scaling-law fit")
    # in u = log(x / x_min) / log(x_max / x_min) ∈ [0, 1]: x^-b = x_min^-b · exp(-β u), β = b log(x_max/x_min)
    x_min, span = x.min(), math.log(x.max() / x.min())
    u = np.log(x / x_min) / span

    yc = y - y.mean()
    syy = float(yc @ yc)

    def linear(beta):
        """For each β: the least-squares (c, a') of y ≈ c + a' e^(-β u), and its RSS (closed form)."""
        e = np.exp(-np.multiply.outer(np.atleast_1d(beta), u))  # [G, n]
        ec = e - e.mean(axis=1, keepdims=True)
        see = np.maximum((ec * ec).sum(axis=1), 1e-300)
        sey = ec @ yc
        slope = sey / see  # a'
        return syy - sey * slope, y.mean() - slope * e.mean(axis=1), slope  # rss, c, a'

    betas = np.concatenate([np.linspace(1e-3, 1, 50), np.linspace(1, 60, 120)[1:]])
    best = betas[np.argmin(linear(betas)[0])]
    lo, hi = max(1e-6, best * 0.5), best * 1.5 + 1e-3
    beta = optimize.minimize_scalar(lambda b: float(linear(b)[0][0]), bounds=(lo, hi), method="bounded").x
    _, c, a_scaled = (float(v[0]) for v in linear(beta))
    b = beta / span
    return {"a": a_scaled * x_min**b, "b": float(b), "c": c}


def fit_scaling(
    x: Sequence[float],
    y: Sequence[float],
    seeds: Sequence,
    form: Form | Literal["auto"] = "auto",
    resamples: int = 1000,
    confidence: float = 0.95,
    random_state: int = 0,
) -> ScalingFit:
    """Fit a scaling law to points ``(x, y)``, each labelled with its ``seed``.

    Args:
        x: compute (interaction FLOPs per example) or examples seen, > 0.
        y: held-out loss at each point.
        seeds: the seed of each point: a bootstrap resample draws whole seeds.
        form: ``power``, ``loglinear`` or ``auto`` (the lower AIC of the proper fits).
        resamples: bootstrap resamples.
        confidence: of the percentile intervals.
        random_state: seeds the bootstrap.

    Example:
        >>> x = [1e4, 1e5, 1e6] * 2
        >>> y = [0.5 + 2 * v ** -0.25 for v in x]
        >>> fit = fit_scaling(x, y, seeds=[0, 0, 0, 1, 1, 1], form="power", resamples=50)
        >>> round(fit.params["b"], 3), round(fit.params["c"], 3)
        (0.25, 0.5)
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    seeds = np.asarray(seeds)
    if len(seeds) != len(x):
        raise ValueError(f"{len(seeds)} seeds for {len(x)} points")
    fits = {}
    for candidate in FORMS:
        try:
            fits[candidate] = fit_form(candidate, x, y)
        except ValueError:
            if candidate == form:
                raise
    if not fits:
        raise ValueError("no form can be fitted to these points (need at least 2 distinct x)")
    proper = [f for f in fits if fits[f].proper]  # log-linear always is
    chosen: Form = min(proper, key=lambda f: fits[f].aic) if form == "auto" else form
    params = fits[chosen].params
    unique = np.unique(seeds)
    generator = np.random.default_rng(random_state)
    draws: dict[str, list[float]] = {name: [] for name in params}
    if len(unique) >= 2:
        members = {s: np.flatnonzero(seeds == s) for s in unique}
        for _ in range(resamples):
            picked = generator.choice(unique, size=len(unique), replace=True)
            index = np.concatenate([members[s] for s in picked])
            try:
                refit = fit_form(chosen, x[index], y[index]).params
            except ValueError:  # a resample with too few distinct x: skip it
                continue
            for name, value in refit.items():
                draws[name].append(value)
    tail = (1 - confidence) / 2
    intervals = {}
    for name, values in draws.items():
        if len(values) < 2:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(values, [tail, 1 - tail])
            intervals[name] = (float(low), float(high))
    return ScalingFit(chosen, params, intervals, {k: np.asarray(v) for k, v in draws.items()}, fits, len(unique), confidence)


@dataclass(frozen=True)
class RateComparison:
    """Family A's rate minus family B's, with its bootstrap interval and two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float


def compare_exponents(a: ScalingFit, b: ScalingFit) -> RateComparison:
    """Do two fits' rates (power-law exponents, or log-linear slopes) differ?

    Both must use the same form. The resamples of the two fits are independent
    (each family's seeds drawn on their own), so their differences, draw by draw,
    estimate the sampling distribution of the difference; the p-value is twice the
    smaller share of differences on either side of 0.
    """
    if a.form != b.form:
        raise ValueError(f"the fits use different forms ({a.form}, {b.form}): fit both with one form")
    da, db = a.rate_draws, b.rate_draws
    n = min(len(da), len(db))
    if n < 2:
        return RateComparison(a.rate - b.rate, math.nan, math.nan, math.nan)
    differences = da[:n] - db[:n]
    tail = (1 - a.confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    p = 2 * min((differences <= 0).mean(), (differences >= 0).mean())
    return RateComparison(a.rate - b.rate, float(low), float(high), float(min(1.0, p)))
