"""The invocation's headline numbers and null-check counts, as metrics of its parent MLflow run: the runs table
then shows, per invocation, how much the undefended model leaks and whether the null checks passed, and
invocations can be compared or searched by them (`metrics.null_placebo_fail > 0`).

The leakage is the attacker's worst case among the attacks every defense faced (`aggregate.worst_case` of
`aggregate.comparable`), as the leaderboard and the plots read it, so the numbers agree with them.
"""

from __future__ import annotations

import pandas as pd

from analysis.aggregate import aggregate, comparable, worst_case
from analysis.headline import null_tally
from analysis.matched import BASELINE
from analysis.runs import GridRuns

def _max(frame: pd.DataFrame, column: str) -> float:
    values = frame[column].dropna() if column in frame else pd.Series([], dtype=float)
    return float(values.max()) if len(values) else float("nan")

def invocation_metrics(runs: GridRuns) -> dict[str, float]:
    """Headline leakage (undefended and least-leaking defended AUC, undefended TPR at 1% FPR, over settings and
    victim archs) and the null checks (placebo cells passing, failing or without a verdict; blind baselines
    flagged of all). Absent numbers are NaN, which the tracker leaves out."""
    table = aggregate(runs.cells)
    worst = worst_case(comparable(table)) if not table.empty else table
    base = worst[worst["defense"] == BASELINE] if not worst.empty else worst
    defended = worst[worst["defense"] != BASELINE] if not worst.empty else worst
    tally = null_tally(table, runs.blind)
    return {
        "undefended_auc": _max(base, "auc_mean"),
        "undefended_tpr_at_1pct_fpr": _max(base, "tpr_at_1pct_fpr_mean"),
        "least_leaking_defense_auc": float(defended["auc_mean"].min()) if len(defended) else float("nan"),
        "null_placebo_pass": float(tally.placebo_pass),
        "null_placebo_fail": float(tally.placebo_fail),
        "null_placebo_open": float(tally.placebo_open),
        "null_blind_flagged": float(tally.blind_flagged),
        "null_blind_total": float(tally.blind_total),
    }
