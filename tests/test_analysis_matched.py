"""Matched utility: the leakage a defense family reaches at a target mIoU, read off a monotone (isotonic) curve
through all its points, marked outside the measured range; its leaderboard sections and frontier plot."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.leaderboard import to_markdown
from analysis.matched import FITTED, NOT_REACHED, UPPER_BOUND, leakage_at, matched_sections, matched_table
from analysis.matched_plots import plot_matched_frontier

SETTING = {"setting": "dependent", "dataset": "cityscapes", "shadow_dataset": "cityscapes", "victim_arch": "pspnet_tiny"}


def _row(defense: str, params: dict, miou: float, auc: float, tpr: float = math.nan, rank: int = 0, **where) -> dict:
    label = defense + "".join(f" {k}={v}" for k, v in params.items())
    return {**SETTING, **where, "defense": defense, "defense_params": json.dumps(params), "defense_label": label,
            "defense_rank": rank, "victim_miou_mean": miou, "auc_mean": auc, "auc_ci_low_mean": auc - 0.05,
            "auc_ci_high_mean": auc + 0.05, "tpr_at_1pct_fpr_mean": tpr, "tpr_at_1pct_fpr_ci_low_mean": tpr / 2,
            "tpr_at_1pct_fpr_ci_high_mean": tpr * 2, "n_members_mean": 48.0, "n_nonmembers_mean": 100.0}


def _family(points: list[tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame([_row("dp_sgd", {"noise_multiplier": i}, u, a) for i, (u, a) in enumerate(points)])


FAMILY = [(0.30, 0.55), (0.40, 0.60), (0.45, 0.80), (0.50, 0.70)]  # 0.45 and 0.50 violate monotonicity


def test_leakage_is_read_off_a_monotone_fit_of_every_point():
    reached = leakage_at(_family(FAMILY), "auc", 0.47)
    assert reached.status == FITTED and "4 settings" in reached.note
    # the violating pair is pooled to 0.75: not the Pareto read-off 0.67 that ignores the 0.80
    assert reached.value == pytest.approx(0.75)
    assert (reached.low, reached.high) == (pytest.approx(0.70), pytest.approx(0.80))
    assert leakage_at(_family(FAMILY), "auc", 0.35).value == pytest.approx(0.575)  # interpolated on the fit


@pytest.mark.parametrize("target, status, value", [
    (0.50, FITTED, 0.75), (0.30, FITTED, 0.55), (0.25, UPPER_BOUND, 0.55), (0.55, NOT_REACHED, math.nan)])
def test_leakage_is_marked_outside_the_measured_range(target, status, value):
    reached = leakage_at(_family(FAMILY), "auc", target)
    assert reached.status == status
    assert reached.value == pytest.approx(value, nan_ok=True)
    if status == NOT_REACHED:
        assert "best mIoU 0.500" in reached.note


def test_the_fit_is_monotone_in_the_target_and_within_the_points():
    rng = np.random.default_rng(0)
    for _ in range(100):
        points = list(zip(rng.uniform(0.1, 0.6, 5), rng.uniform(0.5, 1.0, 5)))
        family = _family(points)
        targets = np.sort(rng.uniform(0.1, max(u for u, _ in points), 4))
        values = [leakage_at(family, "auc", t).value for t in targets]
        assert np.all(np.diff(values) >= -1e-12)
        assert min(a for _, a in points) - 1e-12 <= min(values) and max(values) <= max(a for _, a in points) + 1e-12


def _worst() -> pd.DataFrame:
    rows = [_row("none", {}, 0.60, 0.90, 0.30)]
    rows += [_row("dp_sgd", {"noise_multiplier": n}, u, a, t, rank=1) for n, u, a, t in
             ((0.5, 0.58, 0.80, 0.20), (1.0, 0.52, 0.65, 0.08), (2.0, 0.40, 0.55, 0.02))]
    rows += [_row("relaxloss", {"alpha": 1.0}, 0.57, 0.70, 0.10, rank=2)]
    rows += [_row("none", {}, 0.50, 0.70, 0.10, victim_arch="upernet_tiny")]  # no family to match there
    return pd.DataFrame(rows)


def test_matched_table_targets_the_undefended_miou_minus_each_drop():
    table = matched_table(_worst())
    assert set(table["victim_arch"]) == {"pspnet_tiny"} and set(table["defense"]) == {"dp_sgd", "relaxloss"}
    dp = table[table["defense"] == "dp_sgd"].set_index("drop")
    assert dp.loc[0.05, "target_miou"] == pytest.approx(0.55) and dp.loc[0.10, "target_miou"] == pytest.approx(0.50)
    # 0.55 lies between 0.52 (AUC 0.65) and 0.58 (0.80): half-way
    assert dp.loc[0.05, "auc"] == pytest.approx(0.725) and dp.loc[0.05, "auc_status"] == FITTED
    assert dp.loc[0.05, "tpr_at_1pct_fpr"] == pytest.approx(0.14)
    relax = table[table["defense"] == "relaxloss"].set_index("drop")
    assert relax.loc[0.05, "auc_status"] == UPPER_BOUND and relax.loc[0.05, "auc"] == pytest.approx(0.70)
    assert (table["n_points"][table["defense"] == "dp_sgd"] == 3).all()


def test_matched_sections_render_in_the_leaderboard():
    sections = matched_sections(_worst())
    assert len(sections) == 1 and "pspnet_tiny" in sections[0].heading
    md = to_markdown(sections, SimpleNamespace(experiment="t", parent_run_id="p"))
    assert "| dp_sgd | 3 (0.400–0.580) | AUC 0.725 [0.675, 0.775]<br>monotone fit of 3 settings" in md
    assert "upper bound, outside the measured range: monotone fit of 1 setting (mIoU 0.570-0.570)" in md
    assert "held-out mIoU 0.600" in md and "48 members and 100 non-members" in md
    assert matched_sections(_worst()[lambda f: f["defense"] != "none"]) == []  # nothing to match against


def test_matched_frontier_plot(tmp_path):
    paths = plot_matched_frontier(_worst(), tmp_path)
    assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"] and "pspnet_tiny" in paths[0].name
    with Image.open(paths[0]) as image:
        assert image.size[0] > 1000
    single = _worst()[lambda f: f["defense"] != "dp_sgd"]
    assert plot_matched_frontier(single, tmp_path / "none") == []  # no family with two settings: skipped


def test_defenses_are_compared_under_the_attacks_every_one_faced():
    """LiRA ran against the undefended victim only: the comparison across defenses drops it, so the undefended
    point is not LiRA's 0.95 against distillation's shadow-attack 0.55; each cell's own strongest is kept."""
    from analysis.aggregate import comparable, worst_case

    rows = []
    for defense, attacks in (("none", {"loss_threshold": (0.70, 0.72), "lira": (0.95, 0.97)}),
                             ("distillation", {"loss_threshold": (0.55, 0.60)})):
        for attack, (auc, calibration) in attacks.items():
            rows.append({"setting": "dependent", "dataset": "c", "shadow_dataset": "c", "victim_arch": "a",
                         "shadow_arch": "a", "shadow_overlap": 0.0, "defense": defense, "defense_params": "{}",
                         "defense_label": defense, "control": "none", "attack": attack, "representation": "",
                         "attack_label": attack, "status": "ok", "auc_mean": auc, "calibration_auc_mean": calibration,
                         "defense_rank": 0 if defense == "none" else 1})
    table = pd.DataFrame(rows)
    table["strongest"] = table["attack_label"].eq("lira") | table["defense"].eq("distillation")
    worst = worst_case(comparable(table)).set_index("defense")
    assert worst.loc["none", "attack_label"] == "loss_threshold" and worst.loc["none", "auc_mean"] == 0.70
    assert worst.loc["distillation", "auc_mean"] == 0.55
    assert worst_case(table).set_index("defense").loc["none", "attack_label"] == "lira"  # the cell's own strongest
