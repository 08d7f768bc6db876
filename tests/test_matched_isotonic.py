"""Matched utility without a minimum over noisy victim AUCs: on simulated families with a known linear
privacy-utility curve and AUC noise 0.03, the old read-off (the Pareto front of the points, interpolated) runs
optimistic, by 0.015 AUC with 8 settings (0.003 with 4): denser sweeps look safer, while the monotone (isotonic) fit of every point is close to
unbiased whatever the number of settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_analysis_matched import _row

from analysis.matched import leakage_at, pareto_front

TARGET = 0.40


def truth(miou: np.ndarray) -> np.ndarray:
    return 0.55 + 0.8 * (miou - 0.25)


def pareto_read(family: pd.DataFrame, target: float) -> float:
    """The old rule: linear interpolation along the family's Pareto front (its least-leaking points)."""
    u, a = family["victim_miou_mean"].to_numpy(), family["auc_mean"].to_numpy()
    front = pareto_front(u, a)
    order = np.argsort(u[front])
    return float(np.interp(target, u[front][order], a[front][order]))


def _bias(n_settings: int, reps: int = 200) -> tuple[float, float]:
    rng = np.random.default_rng(n_settings)
    old, new = [], []
    for _ in range(reps):
        miou = np.sort(rng.uniform(0.25, 0.55, n_settings))
        miou[0], miou[-1] = 0.25, 0.55  # the sweep spans the target
        auc = truth(miou) + rng.normal(0, 0.03, n_settings)  # an AUC's noise at 48/100 images
        family = pd.DataFrame([_row("dp_sgd", {"noise_multiplier": i}, u, a) for i, (u, a) in enumerate(zip(miou, auc))])
        old.append(pareto_read(family, TARGET))
        new.append(leakage_at(family, "auc", TARGET).value)
    true = float(truth(np.array([TARGET]))[0])
    return float(np.mean(old) - true), float(np.mean(new) - true)


def test_the_monotone_fit_is_not_optimistic_where_the_pareto_read_off_is():
    old4, new4 = _bias(4)
    old8, new8 = _bias(8)
    # the envelope: optimistic, more so with more settings (measured -0.003 with 4, -0.015 with 8)
    assert old4 < 0 and old8 < -0.01 and old8 < old4 - 0.005
    assert abs(new4) < 0.004 and abs(new8) < 0.004  # measured -0.0001 and -0.001
