"""Comparison plots of one invocation (PNG, SVG and PDF): ROC, privacy-utility frontier, overlap heatmap,
AUC against the Gaussian sigma and the DP epsilon, dependent vs independent setting. A plot that would be
empty or hold a single point is skipped with a notice; every defense and attack keeps one colour and line
style across all of them (analysis.style).

Summary plots show, per defense setting, the strongest attack under the attacker's best shadow overlap and
architecture (`aggregate.worst_case`), among the attacks every defense of the setting faced
(`aggregate.comparable`): the leakage a defense leaves in the worst case, compared like with like.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter

from analysis.aggregate import AUC_CHANCE, aggregate, comparable, strongest, worst_case
from analysis.audit import plot_audit
from analysis.figures import new_figure, save, skip, slug, wrap_title
from analysis.headline import dataset_label
from analysis.matched import pareto_front
from analysis.matched_plots import plot_matched_frontier
from analysis.roc import write_roc_plots
from analysis.runs import load_runs, parse_params
from analysis.style import LINESTYLES, MARKERS, SCREEN, Palette, figure_style, table_palette
from benchmark.defenses.base import Trend
from benchmark.registry import DEFENSES

SETTING_KEYS = ["setting", "dataset", "shadow_dataset"]
SETTING_COLOURS = {"dependent": colormaps["tab10"](0), "independent": colormaps["tab10"](1)}
OVERLAP_KEYS = ["victim_arch", "shadow_arch", "shadow_overlap"]


def _setting_name(setting: str, dataset: str, shadow: str, sources: dict[str, str] | None = None) -> str:
    sources = sources or {}
    return f"{setting} ({dataset_label(dataset, sources)} victim, {dataset_label(shadow, sources)} shadow)"


def _yerr(rows: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars from the mean bootstrap interval; 0 where none was logged."""
    low = (rows["auc_mean"] - rows["auc_ci_low_mean"]).fillna(0).clip(lower=0)
    high = (rows["auc_ci_high_mean"] - rows["auc_mean"]).fillna(0).clip(lower=0)
    return np.vstack([low.to_numpy(), high.to_numpy()])


def _frontier_panel(ax: Axes, rows: pd.DataFrame, metric: str, ylabel: str, chance: float,
                    colours: dict[str, tuple], markers: dict[str, str]) -> None:
    absent = rows[rows[metric].isna()]["defense_label"].tolist()
    rows = rows.dropna(subset=["victim_miou_mean", metric])
    title = None
    for row in rows.itertuples():
        ax.scatter(row.victim_miou_mean, getattr(row, metric), s=55, color=colours[row.defense_label],
                   marker=markers[row.victim_arch], edgecolor="k", linewidth=0.5, zorder=3)
    if len(rows):
        mask = pareto_front(rows["victim_miou_mean"].to_numpy(), rows[metric].to_numpy())
        front = rows[mask].sort_values("victim_miou_mean")
        ax.plot(front["victim_miou_mean"], front[metric], "k--", lw=1, zorder=2, label="Pareto front")
        ax.scatter(front["victim_miou_mean"], front[metric], s=160, facecolor="none", edgecolor="k", lw=1.2, zorder=4)
        for i, row in enumerate(front.itertuples(), start=1):  # short numbers; names in the legend
            ax.annotate(str(i), (row.victim_miou_mean, getattr(row, metric)), fontsize="small", fontweight="bold",
                        xytext=(7, 7), textcoords="offset points")
        title = "Pareto front (circled):\n" + "\n".join(f"{i}  {n}" for i, n in enumerate(front["defense_label"], start=1))
    if absent and rows.empty:
        ax.text(0.5, 0.5, textwrap.fill("no cell has enough non-members to resolve this rate (a TPR at 1% FPR "
                                        "needs at least 100)", 40), transform=ax.transAxes, ha="center",
                va="center", fontsize="medium", color="0.35")
        ax.set(xticks=[], yticks=[], xlabel="Victim mIoU on held-out data (utility, higher is better)", ylabel=ylabel)
        return
    if absent:
        ax.text(0.99, 0.01, textwrap.fill("not resolvable, not shown: " + ", ".join(absent), 55),
                transform=ax.transAxes, ha="right", va="bottom", fontsize="small", color="0.35")
    ax.axhline(chance, c="0.6", ls=":", lw=1, label="chance")
    ax.margins(x=0.08, y=0.08)
    ax.set(xlabel="Victim mIoU on held-out data (utility, higher is better)", ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", title_fontsize="small", alignment="left", title=title)


def _legend_handles(ax: Axes, colours: dict[str, tuple], markers: dict[str, str]) -> list:
    handles = [ax.scatter([], [], color=c, marker="s", label=label) for label, c in colours.items()]
    handles += [ax.scatter([], [], color="w", edgecolor="k", marker=m, label=f"victim {arch}") for arch, m in markers.items()]
    return handles


def plot_frontier(worst: pd.DataFrame, out: Path, palette: Palette | None = None,
                  sources: dict[str, str] | None = None) -> list[Path]:
    """Privacy-utility frontier per setting: AUC and TPR@1%FPR against victim mIoU, Pareto front marked; a
    setting with fewer than two such points (the LiRA protocol has no mIoU) is skipped."""
    if worst.empty or worst["victim_miou_mean"].isna().all():
        return skip("privacy-utility frontier", "no cell with both an AUC and a victim mIoU")
    palette = palette or table_palette(worst)
    labels = list(dict.fromkeys(worst.sort_values("defense_rank")["defense_label"]))
    colours = {label: palette.defense(label) for label in labels}
    markers = {arch: MARKERS[i % len(MARKERS)] for i, arch in enumerate(sorted(worst["victim_arch"].unique()))}
    paths = []
    for key, rows in worst.groupby(SETTING_KEYS, sort=True):
        if len(rows.dropna(subset=["victim_miou_mean", "auc_mean"])) < 2:
            paths += skip(f"privacy-utility frontier, {_setting_name(*key)}", "fewer than two cells with both an "
                          "AUC and a victim mIoU")
            continue
        fig = new_figure(12, 6.2)
        left, right = fig.subplots(1, 2)
        _frontier_panel(left, rows, "auc_mean", "Attack ROC-AUC (privacy leakage, lower is better)", AUC_CHANCE, colours, markers)
        _frontier_panel(right, rows, "tpr_at_1pct_fpr_mean", "TPR at 1% FPR (lower is better)", 0.01, colours, markers)
        used = {label: c for label, c in colours.items() if label in set(rows["defense_label"])}
        archs = {arch: m for arch, m in markers.items() if arch in set(rows["victim_arch"])}
        fig.legend(handles=_legend_handles(left, used, archs), loc="outside lower center", fontsize="small",
                   ncols=min(5, len(used) + len(archs)))
        fig.suptitle(wrap_title(fig, f"Privacy-utility frontier, {_setting_name(*key, sources)}\n"
                     "strongest attack every defense faced, at the worst-case shadow overlap and architecture"))
        paths += save(fig, out, slug("frontier", *key))
    return paths


def overlap_cells(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The undefended cells with a shadow overlap, restricted per setting to the attacks that ran at every
    overlap and architecture, and the strongest of those per cell."""
    # overlap only exists in the dependent setting (the independent shadow comes from another dataset)
    undefended = table[(table["defense"] == "none") & (table["control"] == "none") & table["shadow_overlap"].notna()]
    same = comparable(undefended, keys=tuple(SETTING_KEYS), across=tuple(OVERLAP_KEYS)) if len(undefended) else undefended
    return same, strongest(same)


def plot_overlap_heatmap(table: pd.DataFrame, out: Path, sources: dict[str, str] | None = None) -> list[Path]:
    """AUC of the undefended victim over shadow overlap x architecture, one panel per setting, each cell's
    strongest attack among the attacks that ran in every cell of its panel: an overlap attacked by LiRA next to
    one attacked by the shadow attacks alone would show which attacks ran, not what overlap does."""
    same, best = overlap_cells(table)
    panels = [(k, r) for k, r in best.groupby(SETTING_KEYS, sort=True) if len(r) > 1]
    if not panels:
        return skip("overlap heatmap", "fewer than two undefended cells in every setting")
    fig = new_figure(4.8 * len(panels) + 1.2, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    image = None
    for ax, (key, rows) in zip(axes, panels):
        attacks = sorted(same[(same[SETTING_KEYS] == list(key)).all(axis=1)]["attack_label"].unique())
        rows = rows.assign(arch=[v if v == s else f"{v} (shadow {s})" for v, s in zip(rows["victim_arch"], rows["shadow_arch"])])
        grid = rows.pivot_table(index="arch", columns="shadow_overlap", values="auc_mean", aggfunc="mean")
        spread = rows.pivot_table(index="arch", columns="shadow_overlap", values="auc_std", aggfunc="mean")
        spread = spread.reindex(index=grid.index, columns=grid.columns)
        image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=AUC_CHANCE, vmax=1.0, aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            std = spread.to_numpy()[i, j]
            text = "—" if math.isnan(value) else f"{value:.3f}" + ("" if math.isnan(std) else f"\n± {std:.3f}")
            ax.text(j, i, text, ha="center", va="center", fontsize="medium", color="w" if value < 0.8 else "k")
        ax.set_xticks(range(grid.shape[1]), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), list(grid.index))
        ax.set(xlabel="Shadow overlap (fraction of shadow members\nfrom victim members)",
               title=textwrap.fill(f"{_setting_name(*key, sources)}; strongest of: {', '.join(attacks)}", 48))
    fig.colorbar(image, ax=list(axes), label="Attack ROC-AUC (strongest attack)")
    fig.suptitle(wrap_title(fig, "Undefended victim: attack AUC by shadow overlap and architecture\n"
                 "(in each panel, the same attacks at every overlap)"))
    return save(fig, out, "heatmap_overlap_arch")


def _trend(worst: pd.DataFrame, out: Path, defense: str, trend: Trend, palette: Palette | None = None,
           sources: dict[str, str] | None = None) -> list[Path]:
    """AUC (with interval) against a defense's strength (its `trend`), in the defense's colour (a line style per
    setting and victim arch); the undefended AUC as a dotted reference. Skipped below two parameter values."""
    rows = worst[worst["defense"] == defense]
    rows = rows.assign(x=_trend_x(rows, trend)).dropna(subset=["x", "auc_mean"]) if len(rows) else rows
    if rows.empty:  # also a grid without cells: its table lacks the metric columns
        return skip(trend.stem, f"no finished {defense} cell with its parameter")
    if rows["x"].nunique() < 2:
        return skip(trend.stem, f"a single {defense} parameter value ({rows['x'].iloc[0]:g}): one point is no trend")
    palette = palette or table_palette(worst)
    colour = palette.family(defense)
    fig = new_figure(7.5, 5.6)
    ax = fig.subplots()
    tops = [float((rows["auc_mean"] + _yerr(rows)[1]).max())]
    for i, (key, line) in enumerate(rows.groupby([*SETTING_KEYS, "victim_arch"], sort=True)):
        line = line.sort_values("x")
        style = LINESTYLES[i % len(LINESTYLES)]
        name = f"{key[3]}, {_setting_name(*key[:3], sources)}"
        ax.errorbar(line["x"], line["auc_mean"], yerr=_yerr(line), marker=MARKERS[i % len(MARKERS)], capsize=3,
                    color=colour, ls=style, label=name)
        base = worst[(worst[SETTING_KEYS + ["victim_arch"]] == list(key)).all(axis=1) & (worst["defense"] == "none")]
        if len(base):
            ax.axhline(base["auc_mean"].iloc[0], color=palette.family("none"), ls=style, lw=0.9, label=f"{name}: undefended")
            tops.append(base["auc_mean"].iloc[0])
    ax.axhline(AUC_CHANCE, c="0.5", ls="--", lw=1, label="chance (0.5)")
    ax.set_ylim(min(AUC_CHANCE, ax.get_ylim()[0]) - 0.02, max(tops) + 0.03)  # lines in view
    ax.set(xscale=trend.scale, xlabel=trend.axis, ylabel="Attack ROC-AUC (strongest attack)")
    ticks = sorted(rows["x"].unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center")
    ax.set_title(f"Attack AUC against {trend.what}\n(error bars: bootstrap interval; worst-case shadow overlap)")
    return save(fig, out, trend.stem)


def _trend_x(rows: pd.DataFrame, trend: Trend) -> pd.Series:
    if trend.column:
        return rows[trend.column]
    return rows["defense_params"].map(lambda p: pd.to_numeric(parse_params(p).get(trend.param), errors="coerce"))


def plot_dependent_vs_independent(worst: pd.DataFrame, out: Path, sources: dict[str, str] | None = None) -> list[Path]:
    """Per victim dataset and arch: each defense's AUC in the dependent and independent settings, side by side."""
    pairs = worst.groupby(["dataset", "victim_arch"]).filter(lambda g: g["setting"].nunique() > 1)
    if pairs.empty:
        return skip("dependent vs independent", "no victim evaluated in both settings")
    panels = list(pairs.groupby(["dataset", "victim_arch"], sort=True))
    labels = list(dict.fromkeys(pairs.sort_values("defense_rank")["defense_label"]))
    fig = new_figure(max(6.0, 0.9 * len(labels) * len(panels)) + 1.5, 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, ((dataset, arch), rows) in zip(axes, panels):
        settings = list(rows.groupby(["setting", "shadow_dataset"], sort=True))
        width = 0.8 / len(settings)
        for i, ((setting, shadow), line) in enumerate(settings):
            x = line["defense_label"].map(labels.index).to_numpy() + (i - (len(settings) - 1) / 2) * width
            ax.errorbar(x, line["auc_mean"], yerr=_yerr(line), fmt=MARKERS[i % len(MARKERS)], capsize=3,
                        ms=7, color=SETTING_COLOURS.get(setting, "0.4"),
                        label=f"{setting} (shadow {dataset_label(shadow, sources or {})})")
        ax.axhline(AUC_CHANCE, c="0.5", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
        ax.set(title=f"{dataset_label(dataset, sources or {})} victim, {arch}", ylabel="Attack ROC-AUC (strongest attack)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(wrap_title(fig, "Dependent vs independent shadow data\n(strongest attack, worst-case overlap; error bars: bootstrap interval)"))
    return save(fig, out, "dependent_vs_independent")


def write_plots(tracking_uri: str, experiment: str | None, out: Path, parent_run_id: str | None = None,
                style: str = SCREEN) -> list[Path]:
    """Every plot that the invocation's data supports, as PNG, SVG and PDF in `out`, in the screen or the
    paper style (analysis.style); absent data -> a skip notice."""
    runs = load_runs(tracking_uri, experiment, parent_run_id)
    table = aggregate(runs.cells)
    worst = worst_case(comparable(table))  # every defense compared under the same attacks
    palette, sources = table_palette(table), runs.sources
    with figure_style(style):
        return [
            *write_roc_plots(runs, out, palette),
            *plot_frontier(worst, out, palette, sources),
            *plot_matched_frontier(worst, out, palette, sources),
            *plot_overlap_heatmap(table, out, sources),
            *(path for name in DEFENSES.names() if DEFENSES.lookup(name).trend
              for path in _trend(worst, out, name, DEFENSES.lookup(name).trend, palette, sources)),
            *plot_dependent_vs_independent(worst, out, sources),
            *plot_audit(runs.audits, out),
        ]
