"""Figure plumbing shared by every plot: pyplot-free Agg figures saved as PNG and SVG, and skip notices.

Plots never use pyplot, so drawing them inside the grid runner leaves no global figure state behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

from matplotlib.figure import Figure

from benchmark.safe_paths import inside

log = logging.getLogger("analysis.plots")
FORMATS = ("png", "svg")
DPI = 150


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure, so titles, labels and outside legends never overlap."""
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.svg into `out` (refused if a stem would put them elsewhere)."""
    paths = [inside(out, f"{stem}.{fmt}") for fmt in FORMATS]
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


def skip(name: str, reason: str) -> list[Path]:
    """Say why a plot is not drawn (instead of drawing an empty figure); nothing is written."""
    log.warning("plots: skipped %s: %s", name, reason)
    return []


def slug(*parts: object) -> str:
    """A file-name-safe stem from labels such as 'gaussian σ=0.1'."""
    text = "_".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text.replace("σ", "sigma").replace("ε", "eps"))
