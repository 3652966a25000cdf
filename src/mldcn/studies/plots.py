"""Plots of study results (matplotlib, an optional extra: ``pip install mldcn[plot]``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mldcn.files import atomic_path


def _plot(path: str | Path, title: str, xlabel: str, ylabel: str, draw: Callable) -> Path | None:
    """One figure on a log-scale x axis: ``draw(ax)`` draws it, then it is saved as a PNG
    (atomically). None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    draw(ax)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short span
    ax.set_xlabel(f"{xlabel} (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
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
