"""Plots of study results (matplotlib, an optional extra: ``pip install mldcn[plot]``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mldcn.files import atomic_path


def _plot(path: str | Path, title: str, xlabel: str, ylabel: str, draw: Callable, panels: int = 1) -> Path | None:
    """One figure of ``panels`` side-by-side axes sharing a log-scale x and a y axis:
    ``draw(ax)`` draws a single axes, ``draw(axes)`` a list of them; then it is saved as a
    PNG (atomically). None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(7 if panels == 1 else 3.6 * panels, 4.5), dpi=120, sharex=True, sharey=True, squeeze=False)
    axes = list(axes[0])
    draw(axes[0] if panels == 1 else axes)
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short span
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title) if panels > 1 else axes[0].set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_auc_vs_flops(rows: Sequence[dict], path: str | Path, title: str = "") -> Path | None:
    """Test AUC (mean ± std over seeds) against interaction FLOPs per example, one line per family.

    ``rows`` have ``family``, ``interaction_flops``, ``auc_mean``, ``auc_std``.
    Returns the PNG path, or None when matplotlib is not installed.
    """

    def draw(ax) -> None:
        for family in dict.fromkeys(r["family"] for r in rows):
            points = sorted((r for r in rows if r["family"] == family), key=lambda r: r["interaction_flops"])
            ax.errorbar(
                [r["interaction_flops"] for r in points],
                [r["auc_mean"] for r in points],
                yerr=[r["auc_std"] for r in points],
                marker="o",
                capsize=3,
                label=family,
            )
        ax.legend()

    return _plot(path, title, "interaction FLOPs per example", "test AUC (mean ± std over seeds)", draw)


def plot_scaling(points: dict, fits: dict, path: str | Path, title: str = "", xlabel: str = "interaction FLOPs per example") -> Path | None:
    """Held-out loss against compute (or examples), every run as a point and each family's fitted law as a line.

    ``points``: ``{family: (x, y)}``; ``fits``: ``{family: ScalingFit}`` (:mod:`mldcn.studies.scaling`).
    Returns the PNG path, or None when matplotlib is not installed.
    """
    import numpy as np

    def draw(ax) -> None:
        for family, (x, y) in points.items():
            line = ax.plot(x, y, "o", alpha=0.6, label=family)[0]
            if family in fits:
                grid = np.geomspace(min(x), max(x), 100)
                fit = fits[family]
                ax.plot(grid, fit.predict(grid), "-", color=line.get_color(), label=f"{family}: {fit.form}, rate {fit.rate:.3g}")
        ax.legend(fontsize=7)

    return _plot(path, title, xlabel, "held-out logloss", draw)


def plot_learning_curves(curves: dict, path: str | Path, title: str = "") -> Path | None:
    """Held-out logloss against examples seen, one panel per budget and one line per family.

    ``curves``: ``{budget: {family: (examples, mean logloss over seeds)}}``.
    Returns the PNG path, or None when matplotlib is not installed.
    """

    def draw(axes) -> None:
        axes = axes if isinstance(axes, list) else [axes]
        for ax, (budget, families) in zip(axes, curves.items()):
            for family, (x, y) in families.items():
                ax.plot(x, y, marker=".", label=family)
            ax.set_title(f"{budget:,.0f} FLOPs", fontsize=9)
        axes[0].legend(fontsize=7)

    return _plot(path, title, "examples seen", "held-out logloss (mean over seeds)", draw, panels=len(curves))
