"""The matched-utility frontier: per defense family a curve of leakage against held-out mIoU (each point its
parameter value, error bars its interval), the undefended victim, the targets (its mIoU minus each drop) and
the Pareto front over every point; AUC and TPR at 1% FPR side by side (see analysis.matched)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.aggregate import AUC_CHANCE
from analysis.figures import new_figure, save, skip, slug, wrap_title
from analysis.headline import dataset_label
from analysis.matched import BASELINE, DROPS, GROUP_KEYS, METRICS, UTILITY, pareto_front
from analysis.runs import parse_params
from analysis.style import Palette, table_palette

PANELS = (("auc", "Attack ROC-AUC (lower is better)", AUC_CHANCE), ("tpr_at_1pct_fpr", "TPR at 1% FPR (lower is better)", 0.01))


def _point_labels(points: pd.DataFrame) -> list[str]:
    """Each point's values of the parameters that vary within its family ('' for a single setting)."""
    params = [parse_params(p) for p in points["defense_params"]]
    varying = sorted(k for k in set().union(*params) if len({str(p.get(k)) for p in params}) > 1)
    return [", ".join(f"{k}={p.get(k):g}" if isinstance(p.get(k), (int, float)) else f"{k}={p.get(k)}" for k in varying)
            for p in params]


def _errors(rows: pd.DataFrame, metric: str) -> np.ndarray:
    mean, low, high = METRICS[metric]
    return np.vstack([(rows[mean] - rows[low]).fillna(0).clip(lower=0), (rows[high] - rows[mean]).fillna(0).clip(lower=0)])


def _panel(ax: Axes, group: pd.DataFrame, metric: str, ylabel: str, chance: float, colours: dict[str, tuple]) -> None:
    mean = METRICS[metric][0]
    rows = group.dropna(subset=[UTILITY, mean])
    base = rows[rows["defense"] == BASELINE]
    for defense, points in rows[rows["defense"] != BASELINE].groupby("defense", sort=False):
        points = points.sort_values(UTILITY)
        ax.errorbar(points[UTILITY], points[mean], yerr=_errors(points, metric), marker="o", ms=5, capsize=2, lw=1.3,
                    color=colours[defense], label=defense)
        for x, y, text in zip(points[UTILITY], points[mean], _point_labels(points)):
            if text:
                ax.annotate(text, (x, y), fontsize="x-small", xytext=(4, -9), textcoords="offset points", color=colours[defense])
    if len(base):
        ax.errorbar(base[UTILITY], base[mean], yerr=_errors(base, metric), marker="*", ms=13, color=colours.get(BASELINE, "k"), capsize=2,
                    ls="none", label="undefended", zorder=5)
        for drop, style in zip(DROPS, (":", "-.")):
            ax.axvline(base[UTILITY].iloc[0] - drop, color="0.4", ls=style, lw=1, label=f"undefended mIoU − {drop:g}")
    if len(rows):
        front = rows[pareto_front(rows[UTILITY].to_numpy(), rows[mean].to_numpy())].sort_values(UTILITY)
        ax.plot(front[UTILITY], front[mean], color="k", ls="--", lw=0.8, alpha=0.6, zorder=1, label="Pareto front (all)")
    ax.axhline(chance, color="0.6", ls=":", lw=1, label="chance")
    ax.margins(x=0.12)  # room for the point labels at the right edge
    ax.set(xlabel="Victim mIoU on held-out data (utility, higher is better)", ylabel=ylabel)
    ax.grid(True, alpha=0.3)


def plot_matched_frontier(worst: pd.DataFrame, out: Path, palette: Palette | None = None,
                          sources: dict[str, str] | None = None) -> list[Path]:
    """One figure per setting and victim arch with a swept defense family: leakage against mIoU per family,
    in each family's report colour; skipped where fewer than two points have an mIoU (the LiRA protocol)."""
    if worst.empty:
        return skip("matched-utility frontier", "no cell")
    swept = worst[worst["defense"] != BASELINE].groupby([*GROUP_KEYS, "defense"]).size()
    keys = {k[:-1] for k, n in swept.items() if n > 1}
    if not keys:
        return skip("matched-utility frontier", "no defense family with two or more settings")
    palette = palette or table_palette(worst)
    colours = {d: palette.family(d) for d in worst["defense"].unique()}
    paths = []
    for key, group in worst.groupby(GROUP_KEYS, sort=True):
        if key not in keys:
            continue
        if group[UTILITY].notna().sum() < 2:
            paths += skip(f"matched-utility frontier {' '.join(map(str, key))}", "fewer than two points with a victim mIoU")
            continue
        fig = new_figure(13, 6.4)
        axes = fig.subplots(1, 2)
        for ax, (metric, ylabel, chance) in zip(axes, PANELS):
            _panel(ax, group, metric, ylabel, chance, colours)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(labels)), fontsize="small")
        setting, dataset, shadow, arch = key
        victim, attacker = (dataset_label(d, sources or {}) for d in (dataset, shadow))
        fig.suptitle(wrap_title(fig, f"Privacy-utility per defense family: {arch}, {setting} ({victim} victim, {attacker} shadow)\n"
                     "strongest attack (by calibration AUC) among those every defense faced, worst-case overlap; error bars: its interval"))
        paths += save(fig, out, slug("matched_frontier", *key))
    return paths
