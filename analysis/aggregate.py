"""Seeds -> one row per cell and attack, and the strongest attack per cell: shared by tables and plots.

A "cell" here is a grid cell without its seed and attack: (setting, victim arch, shadow arch, overlap,
defense setting, control). Failed runs never enter a mean; a cell whose every run failed stays visible as
failed, and a cell an attack refuses (label-only outputs it cannot read) as refused, so nothing is ever
reported as 0 or as a silent 0.5.

The strongest attack of a cell, and the attacker's worst case over shadow overlaps and architectures, are
chosen the way an attacker could choose them: by the lower confidence bound of the AUC on the attacker's own
held-out calibration images (`calibration_auc_low`: 8 + 8 shadow images and hundreds of leave-one-out rows
compared on what each shows at least; the highest estimate picked a lucky shadow attack over LiRA in 8% of
simulated cells, tests/test_strongest_rule.py), never by the victim's membership labels. Taking the maximum victim AUC instead would
report the luckiest of many draws (under the null, the maximum of 15 AUCs on 48/100 images averages 0.59).

Several seeds, and a placebo cell's several placebo models (training draws of one recipe), give one row
whose AUC comes with an interval for the mean (`auc_pooled_ci_low/high`, benchmark.metrics.placebo.mean_interval),
not a mean of per-seed bounds. A placebo row's verdict (`placebo_pass`) is that interval containing 0.5: it
carries the spread between placebo models and seeds, where one model's image bootstrap (about +-0.05) did not
and one unlucky placebo model failed every cell it fed. `placebo_families` says, per placebo model, how many of
its cells exclude 0.5 one at a time against the 5% chance alone gives.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.runs import CELL_METRICS
from benchmark.metrics.placebo import expected_exclusions, mean_interval

CELL_KEYS = (
    "setting", "dataset", "shadow_dataset", "victim_arch", "shadow_arch", "shadow_overlap",
    "defense", "defense_params", "defense_label", "control",
)
ATTACK_KEYS = ("attack", "representation", "attack_label")
AUC_CHANCE = 0.5
PROTOCOL = "lira_protocol"  # ray_jobs.units.kinds.protocol.PROTOCOL_SETTING (analysis imports no ray_jobs)
SELECTION_RULE = ("strongest attack = the highest lower 95% bound of the AUC on the attacker's own held-out "
                  "calibration images (8 + 8 shadow images and hundreds of leave-one-out rows compared on what each "
                  "shows at least), never chosen with the victim's membership labels; the chosen attack's victim "
                  "AUC and interval are shown")


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
    row["n_models"] = int(len(done))
    intervals = done.dropna(subset=["auc", "auc_ci_low", "auc_ci_high"])
    row["auc_pooled"], row["auc_pooled_ci_low"], row["auc_pooled_ci_high"] = (
        mean_interval(intervals["auc"], intervals["auc_ci_low"], intervals["auc_ci_high"], intervals["seed"])
        if len(intervals) else (math.nan,) * 3)
    placebo = (group["control"] != "none").all()
    row["placebo_pass"] = (bool(row["auc_pooled_ci_low"] <= AUC_CHANCE <= row["auc_pooled_ci_high"])
                           if placebo and len(intervals) else None)
    return row


def placebo_families(cells: pd.DataFrame) -> pd.DataFrame:
    """Per placebo model (setting, victim arch, seed, placebo model): its finished cells, how many of their
    per-cell AUC intervals exclude 0.5, and how many chance alone would (5% each; its cells share one model
    and its images, so they exclude together or not at all, and a count far above this is one model's luck
    or a flaw: the pooled verdicts of `aggregate` tell which)."""
    keys = ["setting", "dataset", "shadow_dataset", "victim_arch", "seed", "placebo_model"]
    done = cells[(cells["control"] != "none") & (cells["status"] == "FINISHED")].dropna(subset=["auc_ci_low", "auc_ci_high"])
    if done.empty:
        return pd.DataFrame(columns=[*keys, "n_cells", "n_excluding", "expected_by_chance"])
    done = done.assign(excluding=(done["auc_ci_low"] > AUC_CHANCE) | (done["auc_ci_high"] < AUC_CHANCE),
                       placebo_model=done.get("placebo_model", 0))
    out = done.groupby(keys, dropna=False).agg(n_cells=("excluding", "size"), n_excluding=("excluding", "sum"))
    out["expected_by_chance"] = out["n_cells"].map(expected_exclusions)
    return out.reset_index()


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


def _selection(table: pd.DataFrame) -> pd.Series:
    """What the strongest-attack rule compares: the calibration AUC's lower bound
    (benchmark.metrics.selection), the calibration AUC itself for runs that did not record one."""
    low = table["calibration_auc_low_mean"] if "calibration_auc_low_mean" in table else pd.Series(math.nan, index=table.index)
    return low.fillna(table["calibration_auc_mean"])


def _mark_strongest(table: pd.DataFrame) -> pd.DataFrame:
    """Flag each cell's attack with the highest calibration lower bound (the attacker's data, never the victim's);
    LiRA-protocol cells, whose calibration is the figure they report, by `protocol_crossfit`."""
    best = table[table["status"] == "ok"].assign(selection=_selection(table)).dropna(subset=["auc_mean", "selection"])
    best_index = best.groupby(list(CELL_KEYS), dropna=False)["selection"].idxmax()
    table = table.assign(strongest=table.index.isin(best_index.values), auc_crossfit=math.nan)
    return protocol_crossfit(table)


def protocol_crossfit(table: pd.DataFrame) -> pd.DataFrame:
    """LiRA-protocol cells choose their strongest attack cross-fitted: a protocol cell's calibration AUC is the
    AUC it reports (the same pseudo-targets), so the attack with the best even-target AUC is flagged and read on
    the odd targets, the best odd-target attack is read on the even ones, and `auc_crossfit` (on the flagged
    row) is the mean of the two read-outs: no figure is chosen on the targets it is read on."""
    protocol = table[(table["setting"] == PROTOCOL) & (table["status"] == "ok")]
    if protocol.empty or "auc_fold_even_mean" not in table:
        return table
    for _, cell in protocol.dropna(subset=["auc_fold_even_mean", "auc_fold_odd_mean"]).groupby(list(CELL_KEYS), dropna=False):
        on_even, on_odd = cell["auc_fold_even_mean"].idxmax(), cell["auc_fold_odd_mean"].idxmax()
        table.loc[cell.index, "strongest"] = cell.index == on_even
        table.loc[on_even, "auc_crossfit"] = (cell.at[on_even, "auc_fold_odd_mean"] + cell.at[on_odd, "auc_fold_even_mean"]) / 2
    return table


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
    architecture the attacker would pick (highest calibration lower bound): the privacy risk a defense leaves, as the
    frontier and trend plots show it (on `comparable(table)`, so that every defense faced the same attacks)."""
    best = strongest(table)
    if best.empty:
        return best
    keys = ["setting", "dataset", "shadow_dataset", "victim_arch", "defense", "defense_label"]
    index = best.assign(selection=_selection(best)).groupby(keys, dropna=False)["selection"].idxmax()
    return best.loc[index.values].reset_index(drop=True)
