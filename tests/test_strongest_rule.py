"""The strongest-attack rule (analysis.aggregate with benchmark.metrics.selection) on simulated cells: LiRA
(true AUC 0.85) calibrated leave-one-out on 8 targets x 200 pool images against three shadow attacks (true AUC
0.60) calibrated on 8 + 8 shadow images. Taking the highest calibration AUC picks a lucky shadow attack in
about 8% of cells; comparing lower bounds picks one rarely."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from analysis.aggregate import aggregate
from analysis.runs import CELL_METRICS
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics
from benchmark.metrics.selection import auc_lower_bound, auc_standard_error

CELL = {"setting": "dependent", "dataset": "cityscapes", "shadow_dataset": "cityscapes", "victim_arch": "pspnet_tiny",
        "shadow_arch": "pspnet_tiny", "shadow_overlap": 0.0, "defense": "none", "defense_params": "{}",
        "control": "none", "representation": "statistic", "seed": 0, "placebo_model": 0, "status": "FINISHED",
        "error": None, "missing": "", "tuned": None, "refused": None}
TARGETS, POOL = 8, 200


def _shift(auc: float, noise_var: float) -> float:
    return float(np.sqrt(2 * noise_var) * norm.ppf(auc))


def simulated_cells(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """n cells; each row an attack with its calibration AUC and lower bound as the fit unit records them, and a
    victim AUC (its true value: the rule never reads it)."""
    rows = []
    for c in range(n):
        where = {**CELL, "defense_label": f"cell {c}", "defense_key": str(c)}
        masks = np.zeros((TARGETS, POOL), bool)
        for k in range(TARGETS):
            masks[k, rng.permutation(POOL)[: POOL // 2]] = True
        difficulty = 0.5 * rng.normal(size=POOL)
        scores = difficulty[None] + rng.normal(size=(TARGETS, POOL)) + _shift(0.85, 1.25) * masks
        calib = membership_metrics(scores.ravel(), masks.ravel(), n_bootstrap=0)
        attacks = [("lira/online", calib["auc"], calib["n_members"] / TARGETS, calib["n_nonmembers"] / TARGETS, 0.85)]
        for a in range(3):
            member = np.r_[np.ones(8, bool), np.zeros(8, bool)]
            shadow = membership_metrics(rng.normal(size=16) + _shift(0.60, 1.0) * member, member, n_bootstrap=0)
            attacks.append((f"shadow{a}", shadow["auc"], 8, 8, 0.60))
        for label, auc, n1, n0, victim in attacks:
            rows.append({**where, "attack": label, "attack_label": label, "run_id": f"{c}-{label}",
                         **dict.fromkeys(CELL_METRICS, np.nan), "auc": victim, "auc_ci_low": victim - 0.1,
                         "auc_ci_high": victim + 0.1, "calibration_auc": auc,
                         "calibration_auc_low": auc_lower_bound(auc, n1, n0)})
    return pd.DataFrame(rows)


def _lucky_shadow_rate(cells: pd.DataFrame) -> float:
    table = aggregate(cells)
    chosen = table[table["strongest"]]
    assert len(chosen) == cells["defense_label"].nunique()  # one strongest attack per cell
    return float((chosen["attack_label"] != "lira/online").mean())


def test_lower_bounds_rarely_pick_a_lucky_shadow_attack_where_point_estimates_often_do() -> None:
    cells = simulated_cells(300, np.random.default_rng(0))
    new = _lucky_shadow_rate(cells)
    old = _lucky_shadow_rate(cells.assign(calibration_auc_low=np.nan))  # no bound recorded: the old rule
    assert 0.04 <= old <= 0.14  # measured 0.083
    assert new <= 0.05 and new < old / 2  # measured 0.033


def test_the_standard_error_shrinks_with_evidence_and_refuses_bad_counts() -> None:
    assert auc_standard_error(0.8, 8, 8) > 3 * auc_standard_error(0.8, 100, 100)
    assert auc_standard_error(0.5, 48, 100) == pytest.approx(np.sqrt(149 / (12 * 48 * 100)), rel=0.05)
    assert auc_lower_bound(0.8, 100, 100) < 0.8
    with pytest.raises(SegleakError, match="counts > 0"):
        auc_standard_error(0.7, 0, 10)


def test_protocol_cells_choose_their_strongest_attack_cross_fitted() -> None:
    """Six reference attacks of equal true AUC 0.70 on a LiRA-protocol cell, each fold of targets read with
    noise 0.03: choosing by the pooled AUC it reports (its calibration AUC) runs high; the even-fold choice read
    on the odd fold and vice versa (`auc_crossfit`) does not."""
    rng = np.random.default_rng(5)
    rows = []
    for c in range(150):
        for a in range(6):
            even, odd = 0.70 + rng.normal(0, 0.03, 2)
            pooled = (even + odd) / 2
            rows.append({**CELL, "setting": "lira_protocol", "shadow_overlap": "n/a", "defense_label": f"cell {c}",
                         "defense_key": str(c), "attack": f"ref{a}", "attack_label": f"ref{a}", "run_id": f"{c}-{a}",
                         **dict.fromkeys(CELL_METRICS, np.nan), "auc": pooled, "auc_ci_low": pooled - 0.05,
                         "auc_ci_high": pooled + 0.05, "calibration_auc": pooled, "calibration_auc_low": pooled - 0.02,
                         "auc_fold_even": even, "auc_fold_odd": odd})
    table = aggregate(pd.DataFrame(rows))
    chosen = table[table["strongest"]]
    assert len(chosen) == 150 and chosen["auc_crossfit"].notna().all()
    old = table.loc[table.groupby("defense_label")["calibration_auc_mean"].idxmax(), "auc_mean"]
    assert old.mean() - 0.70 > 0.02  # the maximum of six reported figures (measured +0.027)
    assert abs(chosen["auc_crossfit"].mean() - 0.70) < 0.005  # measured +0.0015
