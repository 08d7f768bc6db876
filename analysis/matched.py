"""Matched utility: which defense leaks least at the mIoU a user can afford?

Per setting and victim architecture, every defense family (all grid settings of one registered defense, e.g.
a sweep of its parameter) is a curve of points (held-out mIoU, leakage), where leakage is the strongest
attack (chosen by the attacker's calibration AUC, never by the victim's membership) at the attacker's
worst-case shadow overlap and architecture (`aggregate.worst_case`), as AUC and as TPR at 1% FPR, among the
attacks that ran against every defense (`aggregate.comparable`).

At the undefended victim's mIoU minus each drop in `DROPS`, the least leakage a family reaches is read off its
Pareto front (its points that no other point of the family beats on both axes), linearly interpolated in mIoU
between the two front points around the target; the interval is the same interpolation of the two points'
interval bounds (an approximation: the bounds of two different models are not a joint interval). Outside the
measured range it is marked, never extrapolated: a target above the family's best mIoU is "not reached"; at a
target below its least-leaking point's mIoU, that point's leakage is reported as an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.table import MISSING, Cell, Section

DROPS = (0.05, 0.10)
GROUP_KEYS = ["setting", "dataset", "shadow_dataset", "victim_arch"]
UTILITY = "victim_miou_mean"
# metric name -> (mean, interval low, interval high) columns of aggregate's table
METRICS = {
    "auc": ("auc_mean", "auc_ci_low_mean", "auc_ci_high_mean"),
    "tpr_at_1pct_fpr": ("tpr_at_1pct_fpr_mean", "tpr_at_1pct_fpr_ci_low_mean", "tpr_at_1pct_fpr_ci_high_mean"),
}
INTERPOLATED, MEASURED, UPPER_BOUND, NOT_REACHED, NO_DATA = (
    "interpolated", "measured", "upper bound", "not reached", "no data")
BASELINE = "none"


def pareto_front(utility: np.ndarray, leakage: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both axes (higher utility, lower leakage)."""
    better_or_equal = (utility[None, :] >= utility[:, None]) & (leakage[None, :] <= leakage[:, None])
    strictly = (utility[None, :] > utility[:, None]) | (leakage[None, :] < leakage[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


@dataclass(frozen=True)
class Reached:
    """The least leakage of one family at one target mIoU, and how it was obtained."""

    value: float
    low: float
    high: float
    status: str  # INTERPOLATED, MEASURED, UPPER_BOUND, NOT_REACHED or NO_DATA
    note: str  # which points it rests on, or why there is no value


def least_leakage(points: pd.DataFrame, metric: str, target: float) -> Reached:
    """The least `metric` (a key of METRICS) that the family `points` (rows of worst_case) reaches at `target` mIoU."""
    mean, low, high = METRICS[metric]
    rows = points.dropna(subset=[UTILITY, mean])
    if rows.empty:
        return Reached(math.nan, math.nan, math.nan, NO_DATA, "no point with this metric")
    if target > rows[UTILITY].max():
        best = rows.loc[rows[UTILITY].idxmax()]
        return Reached(math.nan, math.nan, math.nan, NOT_REACHED, f"best mIoU {best[UTILITY]:.3f} ({best['defense_label']})")
    front = rows[pareto_front(rows[UTILITY].to_numpy(), rows[mean].to_numpy())].sort_values(UTILITY)
    u = front[UTILITY].to_numpy()
    first = front.iloc[0]
    if target <= u[0]:  # the least-leaking point already has at least the target mIoU
        status = MEASURED if target == u[0] else UPPER_BOUND
        return Reached(first[mean], first[low], first[high], status, f"{first['defense_label']} at mIoU {u[0]:.3f}")
    right = int(np.searchsorted(u, target))  # u[right - 1] < target <= u[right]
    a, b = front.iloc[right - 1], front.iloc[right]
    if target == u[right]:
        return Reached(b[mean], b[low], b[high], MEASURED, f"{b['defense_label']} at mIoU {u[right]:.3f}")
    w = (target - u[right - 1]) / (u[right] - u[right - 1])

    def mix(column: str) -> float:
        return float((1 - w) * a[column] + w * b[column])

    return Reached(mix(mean), mix(low), mix(high), INTERPOLATED,
                   f"between {a['defense_label']} ({u[right - 1]:.3f}) and {b['defense_label']} ({u[right]:.3f})")


def matched_table(worst: pd.DataFrame, drops: tuple[float, ...] = DROPS) -> pd.DataFrame:
    """One row per (setting, victim arch, defense family, drop): the target mIoU and, per metric, the least
    leakage reached (value, interval, status, note). Empty without an undefended victim to match against."""
    rows = []
    for key, group in worst.groupby(GROUP_KEYS, sort=True):
        base = group[group["defense"] == BASELINE].dropna(subset=[UTILITY])
        if base.empty:
            continue
        undefended = base.iloc[0]
        families = group[group["defense"] != BASELINE].sort_values("defense_rank")
        for defense, points in families.groupby("defense", sort=False):
            for drop in drops:
                target = float(undefended[UTILITY]) - drop
                row = {**dict(zip(GROUP_KEYS, key)), "defense": defense, "n_points": len(points),
                       "miou_min": points[UTILITY].min(), "miou_max": points[UTILITY].max(),
                       "undefended_miou": undefended[UTILITY], "undefended_auc": undefended["auc_mean"],
                       "undefended_tpr_at_1pct_fpr": undefended["tpr_at_1pct_fpr_mean"], "drop": drop,
                       "target_miou": target}
                for metric in METRICS:
                    reached = least_leakage(points, metric, target)
                    row.update({metric: reached.value, f"{metric}_low": reached.low, f"{metric}_high": reached.high,
                                f"{metric}_status": reached.status, f"{metric}_note": reached.note})
                rows.append(row)
    return pd.DataFrame(rows)


_STATUS_TEXT = {
    INTERPOLATED: "interpolated {note}",
    MEASURED: "measured: {note}",
    UPPER_BOUND: "upper bound, outside the measured range: {note}",
}


def _reached_cell(row: pd.Series, metric: str, name: str):  # -> analysis.leaderboard.Cell

    status, note = row[f"{metric}_status"], row[f"{metric}_note"]
    if status in (NOT_REACHED, NO_DATA):
        return Cell([MISSING, f"{status}: {note}"], state="missing", title=f"{status}: {note}")
    interval = "" if math.isnan(row[f"{metric}_low"]) else f" [{row[f'{metric}_low']:.3f}, {row[f'{metric}_high']:.3f}]"
    return Cell([f"{name} {row[metric]:.3f}{interval}", _STATUS_TEXT[status].format(note=note)])


def matched_sections(worst: pd.DataFrame) -> list:
    """Leaderboard sections (analysis.leaderboard.Section), one per setting and victim arch: per defense family
    the least AUC and TPR@1%FPR it reaches at the undefended mIoU minus each drop."""

    table = matched_table(worst)
    sections = []
    if table.empty:
        return sections
    for key, rows in table.groupby(GROUP_KEYS, sort=True):
        setting, dataset, shadow, arch = key
        first = rows.iloc[0]
        header = ["defense", "settings (mIoU range)"]
        for drop in DROPS:
            header += [f"AUC at mIoU − {drop:g}", f"TPR@1%FPR at mIoU − {drop:g}"]
        section = Section(f"matched utility ({setting}: victim {dataset}, shadow {shadow}; {arch}): the least "
                          f"leakage each defense reaches at the undefended mIoU − {' and − '.join(f'{d:g}' for d in DROPS)}",
                          header)
        scored = worst[(worst[GROUP_KEYS] == list(key)).all(axis=1)]
        targets = ", ".join(f"{first['undefended_miou'] - d:.3f} (− {d:g})" for d in DROPS)
        section.notes = [
            f"Undefended {arch}: held-out mIoU {first['undefended_miou']:.3f}, AUC {first['undefended_auc']:.3f}, "
            f"TPR@1%FPR {first['undefended_tpr_at_1pct_fpr']:.3f}; target mIoUs {targets}.",
            "Each defense's points (its grid settings; the strongest attack by calibration AUC at the worst-case "
            "overlap, among the attacks that ran against every defense of this table, so that each faced the same) "
            "form a curve; the least leakage at a target is interpolated linearly along its Pareto front, with the "
            "neighbouring points' interval bounds interpolated alike (approximate). Never extrapolated: a target "
            "above every point's mIoU is not reached; below the least-leaking point's mIoU, its leakage is an upper bound.",
            f"Few samples: each point rests on about {scored['n_members_mean'].median():.0f} members and "
            f"{scored['n_nonmembers_mean'].median():.0f} non-members (one seed per point unless the grid has more), so a "
            "TPR at 1% FPR rests on about one false positive; read the intervals, not the digits.",
        ]
        for _, row in rows[rows["drop"] == DROPS[0]].iterrows():
            same = rows[rows["defense"] == row["defense"]].set_index("drop")
            cells = [Cell([str(row["defense"])]),
                     Cell([f"{row['n_points']} ({row['miou_min']:.3f}–{row['miou_max']:.3f})"])]
            for drop in DROPS:
                cells += [_reached_cell(same.loc[drop], "auc", "AUC"), _reached_cell(same.loc[drop], "tpr_at_1pct_fpr", "TPR")]
            section.rows.append(cells)
        sections.append(section)
    return sections
