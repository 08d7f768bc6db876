"""The report's table model: sections of rows of cells, which the leaderboard, the matched-utility and the
audit tables all build and the Markdown and HTML renderers draw (kept apart so none of them imports another)."""

from __future__ import annotations

from dataclasses import dataclass, field

MISSING = "—"


@dataclass
class Cell:
    """One table cell: its text lines, an optional bold lead, a state for styling, a tooltip, and the AUC it
    shows (the HTML page shades and sorts the cell by it)."""

    lines: list[str]
    strong: str = ""
    state: str = "ok"
    title: str = ""
    auc: float | None = None


@dataclass
class Section:
    """One table with a heading (a dataset setting, or its placebo controls)."""

    heading: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
