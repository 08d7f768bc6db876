"""The answers a reader wants first, in a few lines: how much the undefended model leaks, which defense leaks
least at an mIoU one can afford, whether the null checks pass, and whether the data were real or synthetic.
The leaderboard's key-results box and the end-of-run summary print the same lines.

Everything here reads the attacker's worst case among the attacks every defense faced (`aggregate.worst_case`
of `aggregate.comparable`), as the plots and the matched-utility tables do, so the numbers agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.aggregate import comparable, worst_case
from analysis.matched import BASELINE, DROPS, GROUP_KEYS, UTILITY

SYNTHETIC, REAL = "synthetic", "real"


def dataset_label(name: str, sources: dict[str, str]) -> str:
    """`cityscapes (synthetic)` for a grid dataset made by the embedded generator, `cityscapes (real)` for
    files on disk; the bare name where the invocation did not record it (runs logged before it did)."""
    source = sources.get(name)
    return f"{name} ({source})" if source else name


def setting_heading(setting: str, dataset: str, shadow: str, sources: dict[str, str]) -> str:
    return f"{setting}: victim {dataset_label(dataset, sources)}, shadow {dataset_label(shadow, sources)}"


def data_line(datasets: list[str], sources: dict[str, str]) -> str:
    """What the numbers were measured on."""
    synthetic = [d for d in datasets if sources.get(d) == SYNTHETIC]
    real = [d for d in datasets if sources.get(d) == REAL]
    unknown = [d for d in datasets if d not in synthetic + real]
    parts = []
    if synthetic:
        parts.append(f"SYNTHETIC: {', '.join(synthetic)} are the embedded generated street scenes in "
                     "that dataset's layout, not its real images; the numbers test the pipeline, they say "
                     "nothing about models trained on the real data")
    if real:
        parts.append(f"real: {', '.join(real)} (the dataset's files on disk)")
    if unknown:
        parts.append(f"source not recorded: {', '.join(unknown)}")
    return "Data: " + "; ".join(parts) + "." if parts else "Data: none."


def _interval(row: pd.Series, metric: str) -> str:
    low, high = row[f"{metric}_ci_low_mean"], row[f"{metric}_ci_high_mean"]
    return "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"


def _leak(row: pd.Series) -> str:
    tpr = row["tpr_at_1pct_fpr_mean"]
    tpr_text = "—" if math.isnan(tpr) else f"{tpr:.3f}{_interval(row, 'tpr_at_1pct_fpr')}"
    return f"AUC {row['auc_mean']:.3f}{_interval(row, 'auc')}, TPR@1%FPR {tpr_text}"


def _where(row: pd.Series) -> str:
    overlap = "" if math.isnan(row["shadow_overlap"]) else f", shadow overlap {row['shadow_overlap']:g}"
    arch = "" if row["shadow_arch"] == row["victim_arch"] else f", shadow {row['shadow_arch']}"
    return f"{row['attack_label']}{overlap}{arch}"


def _miou(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


@dataclass(frozen=True)
class KeyResult:
    """The key results of one setting and victim architecture."""

    heading: str
    lines: list[str]


def _group_lines(group: pd.DataFrame, arch: str) -> list[str]:
    base = group[group["defense"] == BASELINE].dropna(subset=["auc_mean"])
    defended = group[group["defense"] != BASELINE].dropna(subset=["auc_mean"])
    if base.empty:
        return [f"No finished undefended {arch} victim: nothing to compare the defenses with."]
    undefended = base.iloc[0]
    lines = [f"Undefended {arch} leaks {_leak(undefended)} (strongest attack {_where(undefended)}); "
             f"held-out mIoU {_miou(undefended[UTILITY])}."]
    if math.isnan(undefended[UTILITY]):
        return lines + ["No held-out mIoU in this setting: no utility to match the defenses at."]
    if defended.empty:
        return lines + [f"No defense was measured against the {arch} victim."]
    for drop in DROPS:
        target = undefended[UTILITY] - drop
        affordable = defended[defended[UTILITY] >= target]
        at = f"At mIoU ≥ {target:.3f} (undefended − {drop:g})" if target > 0 else f"At any mIoU (undefended − {drop:g} ≤ 0)"
        if affordable.empty:
            lines.append(f"{at}: no defense keeps that mIoU.")
            continue
        best = affordable.loc[affordable["auc_mean"].idxmin()]
        lines.append(f"{at} the least leakage is {best['defense_label']}: "
                     f"{_leak(best)}, mIoU {_miou(best[UTILITY])}.")
    return lines


def key_results(table: pd.DataFrame, sources: dict[str, str]) -> list[KeyResult]:
    """Per setting and victim arch: the undefended leakage and the least-leaking affordable defense."""
    if table.empty:
        return []
    worst = worst_case(comparable(table))
    return [KeyResult(f"{setting_heading(*key[:3], sources)}; {key[3]}", _group_lines(group, key[3]))
            for key, group in worst.groupby(GROUP_KEYS, sort=True)]


@dataclass(frozen=True)
class NullTally:
    """The invocation's null checks: placebo victims (AUC interval must contain 0.5) and blind baselines
    (members and non-members must not differ without any model)."""

    placebo_pass: int
    placebo_fail: int
    placebo_open: int  # no interval, failed or unfinished
    blind_flagged: int
    blind_total: int

    @property
    def passed(self) -> bool:
        return not self.placebo_fail and not self.blind_flagged

    def text(self) -> str:
        total = self.placebo_pass + self.placebo_fail + self.placebo_open
        placebo = (f"placebo {self.placebo_pass}/{total} pass" + (f", {self.placebo_fail} FAIL" if self.placebo_fail else "")
                   + (f", {self.placebo_open} without a verdict" if self.placebo_open else "")) if total else "no placebo"
        blind = (f"blind baseline flagged in {self.blind_flagged}/{self.blind_total}" if self.blind_total
                 else "no blind baseline")
        verdict = "all pass" if self.passed and total else ("CHECK FAILED" if not self.passed else "nothing checked")
        return f"Null checks: {verdict} ({placebo}; {blind})."


def null_tally(table: pd.DataFrame, blind: pd.DataFrame) -> NullTally:
    placebo = table[table["control"] != "none"] if not table.empty else table
    verdicts = placebo["placebo_pass"] if len(placebo) else pd.Series([], dtype=object)
    ok = (placebo["status"] == "ok") if len(placebo) else pd.Series([], dtype=bool)
    flagged = blind["flagged"] if not blind.empty else pd.Series([], dtype=bool)
    return NullTally(
        placebo_pass=int((ok & verdicts.eq(True)).sum()),
        placebo_fail=int((ok & verdicts.eq(False)).sum()),
        placebo_open=int((~ok | verdicts.isna()).sum()),
        blind_flagged=int(flagged.sum()),
        blind_total=len(flagged),
    )


def summary_lines(table: pd.DataFrame, blind: pd.DataFrame, sources: dict[str, str]) -> list[str]:
    """The key results as plain text lines (the end of a run prints them)."""
    datasets = sorted(set(table["dataset"]) | set(table["shadow_dataset"])) if not table.empty else []
    lines = [data_line(datasets, sources)]
    for result in key_results(table, sources):
        lines += [f"{result.heading}:", *(f"  {line}" for line in result.lines)]
    return lines + [null_tally(table, blind).text()]
