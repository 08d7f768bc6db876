"""Figure plumbing shared by every plot: pyplot-free Agg figures saved as PNG, SVG (text kept as text, so
it stays editable) and PDF, sized by the current style (analysis.style), and skip notices.

Plots never use pyplot, so drawing them inside the grid runner leaves no global figure state behind.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from analysis.style import figure_size

from benchmark.safe_paths import inside

log = logging.getLogger("analysis.plots")
FORMATS = ("png", "svg", "pdf")
DPI = 150


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure, so titles, labels and outside legends never overlap; `width` x `height`
    inches on screen, scaled to a paper column in the paper style."""
    return Figure(figsize=figure_size(width, height), layout="constrained")


def wrap_title(fig: Figure, title: str) -> str:
    """`title` broken into lines that fit the figure's width at the current style's title size."""
    size = FontProperties(size=rcParams["figure.titlesize"]).get_size_in_points()
    width = max(20, int(fig.get_figwidth() * 72 / (0.6 * size)))
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """Write `stem`.png, .svg and .pdf into `out` (refused if a stem would put them elsewhere)."""
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
