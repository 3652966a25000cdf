"""Plain-text and markdown tables for reports."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], markdown: bool = False) -> str:
    """Render ``rows`` with ``columns`` = [(key, header), ...]; numbers right-aligned."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([_fmt(row.get(key, "")) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [
        all(_is_number(row.get(key)) for row in rows if row.get(key, "") != "") for key, _ in columns
    ]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    out = [line(cells[0])]
    if markdown:
        out.append("|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(values) for values in cells[1:])
    return "\n".join(out)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def mean_sd(values, digits: int = 4) -> str:
    """``mean ± sd`` of ``values`` (sd 0 for one value)."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"
