"""Matched utility: which defense leaks least at the mIoU a user can afford?

Per setting and victim architecture, every defense family (all grid settings of one registered defense, e.g.
a sweep of its parameter) is a curve of points (held-out mIoU, leakage), where leakage is the strongest
attack (chosen by the attacker's calibration AUC, never by the victim's membership) at the attacker's
worst-case shadow overlap and architecture (`aggregate.worst_case`), as AUC and as TPR at 1% FPR, among the
attacks that ran against every defense (`aggregate.comparable`).

At the undefended victim's mIoU minus each drop in `DROPS`, a family's leakage is read off a monotone curve
fitted to every one of its points (isotonic regression: leakage non-decreasing in mIoU, sklearn), linearly
interpolated between fitted points. Not off its Pareto front: the least of several noisy victim AUCs runs
optimistic by 0.01-0.02 AUC with 4-8 settings and favours the densest sweep (tests/test_matched_isotonic.py),
and chooses with the victim's membership labels. The interval is the same fit of the points' interval bounds
(isotonic regression preserves order, so it brackets the curve; an approximation: the bounds of different
models are not a joint interval). The number of settings of each family is stated. Outside the measured range
it is marked, never extrapolated: a target above the family's best mIoU is "not reached"; below its lowest
mIoU, the curve's value there is reported as an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from analysis.table import MISSING, Cell, Section

DROPS = (0.05, 0.10)
GROUP_KEYS = ["setting", "dataset", "shadow_dataset", "victim_arch"]
UTILITY = "victim_miou_mean"
# metric name -> (mean, interval low, interval high) columns of aggregate's table
METRICS = {
    "auc": ("auc_mean", "auc_ci_low_mean", "auc_ci_high_mean"),
    "tpr_at_1pct_fpr": ("tpr_at_1pct_fpr_mean", "tpr_at_1pct_fpr_ci_low_mean", "tpr_at_1pct_fpr_ci_high_mean"),
}
FITTED, UPPER_BOUND, NOT_REACHED, NO_DATA = ("monotone fit", "upper bound", "not reached", "no data")
BASELINE = "none"


def pareto_front(utility: np.ndarray, leakage: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both axes (higher utility, lower leakage)."""
    better_or_equal = (utility[None, :] >= utility[:, None]) & (leakage[None, :] <= leakage[:, None])
    strictly = (utility[None, :] > utility[:, None]) | (leakage[None, :] < leakage[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


@dataclass(frozen=True)
class Reached:
    """The leakage of one family at one target mIoU, and how it was obtained."""

    value: float
    low: float
    high: float
    status: str  # FITTED, UPPER_BOUND, NOT_REACHED or NO_DATA
    note: str  # which points it rests on, or why there is no value


def monotone_fit(utility: np.ndarray, values: np.ndarray) -> IsotonicRegression:
    """Leakage as a non-decreasing function of mIoU through every point of a family (ties in mIoU averaged)."""
    return IsotonicRegression(increasing=True, out_of_bounds="clip").fit(utility, values)


def leakage_at(points: pd.DataFrame, metric: str, target: float) -> Reached:
    """The `metric` (a key of METRICS) that the family `points` (rows of worst_case) reaches at `target` mIoU,
    on its monotone fit."""
    mean, low, high = METRICS[metric]
    rows = points.dropna(subset=[UTILITY, mean])
    if rows.empty:
        return Reached(math.nan, math.nan, math.nan, NO_DATA, "no point with this metric")
    u = rows[UTILITY].to_numpy(float)
    if target > u.max():
        best = rows.loc[rows[UTILITY].idxmax()]
        return Reached(math.nan, math.nan, math.nan, NOT_REACHED, f"best mIoU {best[UTILITY]:.3f} ({best['defense_label']})")
    at = max(target, u.min())
    value = float(monotone_fit(u, rows[mean].to_numpy(float)).predict([at])[0])
    bounds = rows.dropna(subset=[low, high])
    lo, hi = ((float(monotone_fit(bounds[UTILITY].to_numpy(float), bounds[c].to_numpy(float)).predict([at])[0])
               for c in (low, high)) if len(bounds) else (math.nan, math.nan))
    where = f"monotone fit of {len(rows)} setting{'s' * (len(rows) != 1)} (mIoU {u.min():.3f}-{u.max():.3f})"
    if target < u.min():
        return Reached(value, lo, hi, UPPER_BOUND, f"{where}, at its lowest mIoU {u.min():.3f}")
    return Reached(value, lo, hi, FITTED, where)


def matched_table(worst: pd.DataFrame, drops: tuple[float, ...] = DROPS) -> pd.DataFrame:
    """One row per (setting, victim arch, defense family, drop): the target mIoU and, per metric, the
    leakage on the family's monotone curve (value, interval, status, note). Empty without an undefended victim to match against."""
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
                    reached = leakage_at(points, metric, target)
                    row.update({metric: reached.value, f"{metric}_low": reached.low, f"{metric}_high": reached.high,
                                f"{metric}_status": reached.status, f"{metric}_note": reached.note})
                rows.append(row)
    return pd.DataFrame(rows)


_STATUS_TEXT = {
    FITTED: "{note}",
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
    the AUC and TPR@1%FPR of its monotone curve at the undefended mIoU minus each drop."""

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
        section = Section(f"matched utility ({setting}: victim {dataset}, shadow {shadow}; {arch}): the "
                          f"leakage of each defense's monotone curve at the undefended mIoU − {' and − '.join(f'{d:g}' for d in DROPS)}",
                          header)
        scored = worst[(worst[GROUP_KEYS] == list(key)).all(axis=1)]
        targets = ", ".join(f"{first['undefended_miou'] - d:.3f} (− {d:g})" for d in DROPS)
        section.notes = [
            f"Undefended {arch}: held-out mIoU {first['undefended_miou']:.3f}, AUC {first['undefended_auc']:.3f}, "
            f"TPR@1%FPR {first['undefended_tpr_at_1pct_fpr']:.3f}; target mIoUs {targets}.",
            "Each defense's points (its grid settings; the strongest attack by calibration AUC at the worst-case "
            "overlap, among the attacks that ran against every defense of this table, so that each faced the same) "
            "are fitted by one monotone curve (isotonic: leakage non-decreasing in mIoU, every point counts, no minimum "
            "over noisy AUCs), read at the target; its interval is the same fit of the points' bounds (approximate). "
            "Never extrapolated: a target above every point's mIoU is not reached; below the lowest, the curve's "
            "value there is an upper bound. The settings column gives each family's number of settings.",
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
