"""Log-log ROC curves per defense, from each cell's scores.csv: where low-FPR leakage becomes visible.
Both axes span the same decades (equal aspect), 1% and 0.1% FPR are marked and each attack's TPR there is in
the legend (AUC is in the leaderboard; at low FPR it says little).

One figure per leaderboard row (setting, victim arch, shadow arch, overlap): a panel per defense setting,
a curve per attack, for the lowest finished seed (curves of different victims are not averaged).
"""

from __future__ import annotations

import math
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.font_manager import FontProperties

from analysis.figures import new_figure, save, skip, slug, wrap_title
from analysis.headline import dataset_label
from analysis.runs import GridRuns, download_scores
from analysis.style import Palette, palette as style_palette
from benchmark.metrics.membership import roc_curve

ROW_KEYS = ["setting", "dataset", "shadow_dataset", "victim_arch", "shadow_arch", "shadow_overlap"]
MAX_COLS = 4
LOW_FPRS = (0.01, 0.001)  # the rates marked on every ROC and read off it in the legend


def _first_seed_runs(cells: pd.DataFrame) -> pd.DataFrame:
    done = cells[(cells["status"] == "FINISHED") & (cells["control"] == "none")]
    return done.sort_values("seed").groupby([*ROW_KEYS, "defense_label", "attack_label"], dropna=False).head(1)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, rate: float, n_nonmembers: int) -> str:
    """The curve's TPR at FPR `rate`; a dash where fewer than 1/rate non-members cannot resolve that rate."""
    if n_nonmembers * rate < 1:
        return "—"
    return f"{tpr[fpr <= rate + 1e-12].max():.3f}"


def _floor(n_members: int, n_nonmembers: int) -> float:
    """The lower limit of both axes: a whole decade at or below the data's resolution and at most 1e-3, so
    both low-FPR marks are always on the plot and the axes show equal decades."""
    return 10.0 ** math.floor(math.log10(min(1 / max(1, n_nonmembers), 1 / max(1, n_members), min(LOW_FPRS))))


def _panel(ax, curves: list[tuple[str, np.ndarray, np.ndarray]], styles: dict[str, dict], floor: float,
           n_nonmembers: int, title: str) -> None:
    """One log-log ROC panel with equal decades: a step curve per attack, the chance diagonal, the low-FPR
    rates marked, the rates too low for the number of non-members shaded, and each attack's TPR at those
    rates written in the lower right, below the diagonal, where no curve above chance runs."""
    ax.plot([floor, 1], [floor, 1], ls="--", c="0.6", lw=1, label="chance")
    resolvable = 1 / max(1, n_nonmembers)
    if resolvable > floor:
        ax.axvspan(floor, resolvable, color="0.92", lw=0, zorder=0, label="FPR below 1 / non-members: unresolved")
    for rate in LOW_FPRS:
        ax.axvline(rate, c="0.35", ls=":", lw=0.9, zorder=1)
        ax.annotate(f"{100 * rate:g}%", (rate, floor), xytext=(2, 2), textcoords="offset points", rotation=90,
                    va="bottom", ha="left", fontsize="x-small", color="0.3")
    rates = "TPR at " + " / ".join(f"{100 * r:g}%" for r in LOW_FPRS) + " FPR"
    lines = [(rates, "0.2")]
    for attack, fpr, tpr in sorted(curves, key=lambda c: c[0]):
        ax.step(np.maximum(fpr, floor), np.maximum(tpr, floor), where="post", lw=1.5, **styles[attack], label=attack)
        values = " / ".join(_tpr_at(fpr, tpr, r, n_nonmembers) for r in LOW_FPRS)
        lines.append((f"{attack}: {values}", styles[attack]["color"]))
    step = 1.35 * FontProperties(size="small").get_size_in_points()  # one line of text, in points
    for i, (text, colour) in enumerate(reversed(lines)):
        ax.annotate(text, (1, 0), xycoords="axes fraction", xytext=(-4, 4 + i * step), textcoords="offset points",
                    ha="right", va="bottom", fontsize="small", color=colour,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.3})
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), title=title)
    ax.set_aspect("equal")
    ax.grid(True, which="major", alpha=0.3)


def _legend(fig, ax, columns: int = 1) -> None:
    """One legend for the whole figure (line styles are the same in every panel), below the panels."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(2 * columns, len(labels)), fontsize="small")


def plot_cell_roc(scores: pd.DataFrame, out: Path, title: str, attack: str) -> Path:
    """The `roc.png` artifact of one grid cell: its attack's log-log ROC on the victim's queries."""
    is_member = scores["is_member"].to_numpy(bool)
    fpr, tpr, _ = roc_curve(scores["score"].to_numpy(float), is_member)
    fig = new_figure(5.0, 5.0)
    ax = fig.subplots()
    n_nonmembers = int((~is_member).sum())
    _panel(ax, [(attack, fpr, tpr)], {attack: {"color": "tab:blue", "ls": "-"}},
           _floor(int(is_member.sum()), n_nonmembers), n_nonmembers, textwrap.fill(title, 60))
    ax.set(xlabel="False positive rate", ylabel="True positive rate")
    _legend(fig, ax)
    fig.savefig(out, dpi=120)
    return out


def _figure(runs: GridRuns, key: tuple, rows: pd.DataFrame, styles: dict[str, dict], tmp: Path, out: Path) -> list[Path]:
    setting, dataset, shadow_dataset, arch, shadow_arch, overlap = key
    labels = [label for _, label in sorted(set(zip(rows["defense_key"], rows["defense_label"])))]
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    n_members, n_nonmembers = 0, {}  # the latter per panel: the rates it resolves
    for row in rows.itertuples():
        scores = download_scores(runs.tracking_uri, row.run_id, tmp / row.run_id)
        if scores is None or scores["is_member"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(scores["score"].to_numpy(float), scores["is_member"].to_numpy(bool))
        curves.setdefault(row.defense_label, []).append((row.attack_label, fpr, tpr))
        n_nonmembers[row.defense_label] = max(n_nonmembers.get(row.defense_label, 0), int((scores["is_member"] == 0).sum()))
        n_members = max(n_members, int((scores["is_member"] == 1).sum()))
    labels = [label for label in labels if label in curves]
    where = f"shadow overlap {overlap:g}"
    if math.isnan(overlap):
        where = ("each reference in turn the target, scores pooled" if setting == "lira_protocol"
                 else "no shadow overlap (independent setting)")
    victim, attacker = (dataset_label(d, runs.sources) for d in (dataset, shadow_dataset))
    name = f"ROC {arch}, {where} ({victim} vs {attacker})"
    if not labels:
        return skip(name, "no scores.csv artifact in its cells")
    ncols = min(MAX_COLS, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    width = max(5.5, 3.4 * ncols + 1.0)
    fig = new_figure(width, 3.4 * nrows + 1.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    floor = _floor(n_members, max(n_nonmembers.values()))
    for i, (ax, label) in enumerate(zip(axes, labels)):
        _panel(ax, curves[label], styles, floor, n_nonmembers[label], textwrap.fill(label, 34))
        ax.set(xlabel="False positive rate" if i + ncols >= len(labels) else None,
               ylabel="True positive rate" if i % ncols == 0 else None)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    _legend(fig, max(axes[:len(labels)], key=lambda a: len(a.get_legend_handles_labels()[1])), ncols)
    shadow = "" if shadow_arch == arch else f", shadow {shadow_arch}"
    title = (f"Log-log ROC per defense: {setting} setting ({victim} victim, {attacker} shadow), "
             f"victim {arch}{shadow}, {where}; lowest seed")
    fig.suptitle(wrap_title(fig, title))
    suffix = () if math.isnan(overlap) else (f"ov{overlap:g}",)
    return save(fig, out, slug("roc", setting, dataset, shadow_dataset, arch, shadow_arch, *suffix))


def write_roc_plots(runs: GridRuns, out: Path, palette: Palette | None = None) -> list[Path]:
    """One log-log ROC figure per leaderboard row; each attack has the report's colour and line style."""
    chosen = _first_seed_runs(runs.cells)
    if chosen.empty:
        return skip("ROC curves", "no finished attack cell")
    palette = palette or style_palette([], zip(chosen["attack"], chosen["attack_label"]))
    styles = {label: palette.attack(label).line() for label in chosen["attack_label"].unique()}
    paths: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="segleak-scores-") as tmp:
        for key, rows in chosen.groupby(ROW_KEYS, dropna=False, sort=True):
            paths += _figure(runs, key, rows, styles, Path(tmp), out)
    return paths
