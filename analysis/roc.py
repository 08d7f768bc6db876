"""Log-log ROC curves per defense, from each cell's scores.csv: where low-FPR leakage becomes visible.

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
from matplotlib import colormaps

from analysis.figures import new_figure, save, skip, slug
from analysis.runs import GridRuns, download_scores
from benchmark.metrics.membership import roc_curve

ROW_KEYS = ["setting", "dataset", "shadow_dataset", "victim_arch", "shadow_arch", "shadow_overlap"]
MAX_COLS = 4


def _first_seed_runs(cells: pd.DataFrame) -> pd.DataFrame:
    done = cells[(cells["status"] == "FINISHED") & (cells["control"] == "none")]
    return done.sort_values("seed").groupby([*ROW_KEYS, "defense_label", "attack_label"], dropna=False).head(1)


def _panel(ax, curves: list[tuple[str, np.ndarray, np.ndarray]], colours: dict[str, tuple], floor_x: float,
           floor_y: float, title: str) -> None:
    """One log-log ROC panel: a step curve per attack, the chance diagonal, limits at the data's resolution."""
    ax.plot([floor_x, 1], [floor_x, 1], ls="--", c="0.6", lw=1, label="chance")
    for attack, fpr, tpr in sorted(curves, key=lambda c: c[0]):
        auc = float(np.trapezoid(tpr, fpr))
        ax.step(fpr, tpr, where="post", c=colours[attack], lw=1.5, label=f"{attack} (AUC {auc:.2f})")
    ax.set(xscale="log", yscale="log", xlim=(floor_x, 1), ylim=(floor_y, 1.05), title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_cell_roc(scores: pd.DataFrame, out: Path, title: str, attack: str) -> Path:
    """The `roc.png` artifact of one grid cell: its attack's log-log ROC on the victim's queries."""
    is_member = scores["is_member"].to_numpy(bool)
    fpr, tpr, _ = roc_curve(scores["score"].to_numpy(float), is_member)
    fig = new_figure(5.0, 4.4)
    ax = fig.subplots()
    _panel(ax, [(attack, fpr, tpr)], {attack: "tab:blue"}, 1 / max(1, (~is_member).sum()),
           1 / max(1, is_member.sum()), textwrap.fill(title, 60))
    ax.set(xlabel="False positive rate", ylabel="True positive rate")
    fig.savefig(out, dpi=120)
    return out


def _figure(
    runs: GridRuns, key: tuple, rows: pd.DataFrame, colours: dict[str, tuple], tmp: Path, out: Path
) -> list[Path]:
    setting, dataset, shadow_dataset, arch, shadow_arch, overlap = key
    labels = [label for _, label in sorted(set(zip(rows["defense_key"], rows["defense_label"])))]
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    floor_x, floor_y = 1.0, 1.0
    for row in rows.itertuples():
        scores = download_scores(runs.tracking_uri, row.run_id, tmp / row.run_id)
        if scores is None or scores["is_member"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(scores["score"].to_numpy(float), scores["is_member"].to_numpy(bool))
        curves.setdefault(row.defense_label, []).append((row.attack_label, fpr, tpr))
        floor_x = min(floor_x, 1 / int((scores["is_member"] == 0).sum()))
        floor_y = min(floor_y, 1 / int((scores["is_member"] == 1).sum()))
    labels = [label for label in labels if label in curves]
    where = f"shadow overlap {overlap:g}"
    if math.isnan(overlap):
        where = ("each reference in turn the target, scores pooled" if setting == "lira_protocol"
                 else "no shadow overlap (independent setting)")
    name = f"ROC {arch}, {where} ({dataset} vs {shadow_dataset})"
    if not labels:
        return skip(name, "no scores.csv artifact in its cells")
    ncols = min(MAX_COLS, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    width = max(5.5, 3.2 * ncols + 1.6)
    fig = new_figure(width, 3.0 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, label in zip(axes, labels):
        _panel(ax, curves[label], colours, floor_x, floor_y, label)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    fig.supxlabel("False positive rate")
    fig.supylabel("True positive rate")
    shadow = "" if shadow_arch == arch else f", shadow {shadow_arch}"
    title = (f"Log-log ROC per defense: {setting} setting ({dataset} victim, {shadow_dataset} shadow), "
             f"victim {arch}{shadow}, {where}; lowest seed")
    fig.suptitle(textwrap.fill(title, width=int(width * 10)))
    suffix = () if math.isnan(overlap) else (f"ov{overlap:g}",)
    return save(fig, out, slug("roc", setting, dataset, shadow_dataset, arch, shadow_arch, *suffix))


def write_roc_plots(runs: GridRuns, out: Path) -> list[Path]:
    """One log-log ROC figure per leaderboard row; attack colours are the same in every figure."""
    chosen = _first_seed_runs(runs.cells)
    if chosen.empty:
        return skip("ROC curves", "no finished attack cell")
    palette = colormaps["tab10"].colors + colormaps["tab20"].colors[1::2]  # 20 distinct colours: 11+ attacks
    colours = {a: palette[i % len(palette)] for i, a in enumerate(sorted(chosen["attack_label"].unique()))}
    paths: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="segleak-scores-") as tmp:
        for key, rows in chosen.groupby(ROW_KEYS, dropna=False, sort=True):
            paths += _figure(runs, key, rows, colours, Path(tmp), out)
    return paths
