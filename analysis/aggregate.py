"""Seeds -> one row per cell and attack, and the strongest attack per cell: shared by tables and plots.

A "cell" here is a grid cell without its seed and attack: (setting, victim arch, shadow arch, overlap,
defense setting, control). Failed runs never enter a mean; a cell whose every run failed stays visible as
failed, and a cell an attack refuses (label-only outputs it cannot read) as refused, so nothing is ever
reported as 0 or as a silent 0.5.

The strongest attack of a cell, and the attacker's worst case over shadow overlaps and architectures, are
chosen the way an attacker could choose them: by the AUC on the attacker's own held-out calibration images
(`calibration_auc`), never by the victim's membership labels. Taking the maximum victim AUC instead would
report the luckiest of many draws (under the null, the maximum of 15 AUCs on 48/100 images averages 0.59).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.runs import CELL_METRICS

CELL_KEYS = (
    "setting", "dataset", "shadow_dataset", "victim_arch", "shadow_arch", "shadow_overlap",
    "defense", "defense_params", "defense_label", "control",
)
ATTACK_KEYS = ("attack", "representation", "attack_label")
AUC_CHANCE = 0.5
SELECTION_RULE = ("strongest attack = the highest AUC on the attacker's own held-out calibration images, "
                  "never chosen with the victim's membership labels; the chosen attack's victim AUC and interval "
                  "are shown")


def _join_unique(values: pd.Series) -> str:
    return "; ".join(dict.fromkeys(v for v in values if isinstance(v, str) and v))


def _aggregate_group(group: pd.DataFrame) -> dict[str, object]:
    done = group[group["status"] == "FINISHED"]
    row: dict[str, object] = {
        "seeds": ";".join(str(int(s)) for s in sorted(group["seed"].dropna().unique())),
        "n_seeds": int(done["seed"].nunique()),
        "n_failed": int((group["status"] == "FAILED").sum()),
        "error": _join_unique(group["error"]),
        "missing": _join_unique(group["missing"]),
        "tuned": _join_unique(group["tuned"]) if "tuned" in group else "",
        "run_ids": ";".join(group["run_id"]),
        "defense_key": group["defense_key"].iloc[0],
    }
    refused = done["refused"].notna() if "refused" in done else pd.Series(False, index=done.index)
    row["refused"] = _join_unique(done["refused"]) if refused.any() else ""
    done = done[~refused]
    row["status"] = "ok" if len(done) else ("refused" if refused.any() else "failed" if row["n_failed"] else "unfinished")
    for name in CELL_METRICS:
        values = done[name].dropna()
        row[f"{name}_mean"] = values.mean() if len(values) else math.nan
        row[f"{name}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
    row["placebo_pass"] = _null_check(done) if (group["control"] != "none").all() else None
    return row


def _null_check(done: pd.DataFrame) -> bool | None:
    """A placebo passes when every seed's AUC interval contains chance; None when there is no interval."""
    intervals = done[["auc_ci_low", "auc_ci_high"]].dropna()
    if intervals.empty:
        return None
    return bool(((intervals["auc_ci_low"] <= AUC_CHANCE) & (AUC_CHANCE <= intervals["auc_ci_high"])).all())


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and attack: every metric's mean and std over seeds, status, errors, strongest flag."""
    keys = list(CELL_KEYS + ATTACK_KEYS)
    if cells.empty:
        return pd.DataFrame(columns=[*keys, "status", "strongest", "auc_mean"])
    rows = [
        {**dict(zip(keys, key)), **_aggregate_group(group)}
        for key, group in cells.sort_values("seed").groupby(keys, dropna=False, sort=False)
    ]
    table = pd.DataFrame(rows)
    ranks = {key: rank for rank, key in enumerate(sorted(set(table["defense_key"])))}
    table["defense_rank"] = table.pop("defense_key").map(ranks)
    order = ["setting", "dataset", "shadow_dataset", "control", "victim_arch", "shadow_overlap", "shadow_arch", "defense_rank", "attack_label"]
    return _mark_strongest(table).sort_values(order).reset_index(drop=True)


def _mark_strongest(table: pd.DataFrame) -> pd.DataFrame:
    """Flag each cell's attack with the highest calibration AUC (the attacker's own data, never the victim's)."""
    best = table[table["status"] == "ok"].dropna(subset=["auc_mean", "calibration_auc_mean"])
    best_index = best.groupby(list(CELL_KEYS), dropna=False)["calibration_auc_mean"].idxmax()
    return table.assign(strongest=table.index.isin(best_index.values))


def comparable(table: pd.DataFrame, keys: tuple[str, ...] = ("setting", "dataset", "shadow_dataset", "victim_arch"),
               across: tuple[str, ...] = ("defense_label",)) -> pd.DataFrame:
    """Only the attacks that ran against every defense setting of their (setting, victim arch), the strongest
    re-chosen among them: defenses compared by the strongest attack each faced must have faced the same
    attacks (one attacked by the shadow attacks alone would look safer than one that also faced LiRA). A
    group with no attack in common keeps all of its attacks. `keys` and `across` compare other things alike:
    the overlap heatmap compares shadow overlaps and architectures under the attacks that ran at every one."""
    kept = []
    for _, group in table.groupby(list(keys), dropna=False, sort=False):
        faced = group[group["control"] == "none"].groupby(list(across), dropna=False)["attack_label"].agg(set)
        common = set.intersection(*faced) if len(faced) else set()
        kept.append(group[group["attack_label"].isin(common)] if common else group)
    if not kept:
        return table
    return _mark_strongest(pd.concat(kept))


def strongest(table: pd.DataFrame, control: str = "none") -> pd.DataFrame:
    """The strongest attack's row of every cell with the given control (one row per cell)."""
    return table[table["strongest"] & (table["control"] == control)].reset_index(drop=True)


def worst_case(table: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, victim arch, defense setting): the strongest attack under the shadow overlap and
    architecture the attacker would pick (highest calibration AUC): the privacy risk a defense leaves, as the
    frontier and trend plots show it (on `comparable(table)`, so that every defense faced the same attacks)."""
    best = strongest(table)
    if best.empty:
        return best
    keys = ["setting", "dataset", "shadow_dataset", "victim_arch", "defense", "defense_label"]
    index = best.groupby(keys, dropna=False)["calibration_auc_mean"].idxmax()
    return best.loc[index.values].reset_index(drop=True)
