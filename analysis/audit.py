"""The report's one-run privacy audits: a leaderboard section and the empirical-vs-accountant epsilon plot.

An audit's epsilon is a lower bound at the logged confidence (every (score, k) test tried is paid for), so
a DP model's bound must sit on or below the diagonal (its accountant's epsilon, an upper bound); a point
above it means the guarantee does not hold as implemented. The ceiling is what the audit could show at most
with its number of canaries (every guess right): a bound near it is limited by the canaries, not the model.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps

from analysis.figures import new_figure, save, skip
from analysis.table import MISSING, Cell, Section
from benchmark.audit.canaries import KINDS

NOTE = ("One-run audits (Steinke, Nasr, Jagielski 2023): m canaries outside every query set, each in the audited "
        "model's training with probability 1/2; the auditor guesses \"in\" for the k highest scores and \"out\" for "
        "the k lowest, and the count of correct guesses rejects every epsilon below the bound. The bound holds at "
        "the stated confidence after paying for every (score, k) tried (Bonferroni); each kind's bound holds on "
        "its own, uncorrected for the kinds tried, so the check against the accountant reads the pooled bound only. "
        "Ceiling: the bound if every guess were right. A DP model's bound must not exceed its accountant's epsilon; "
        "each placebo (the same audit of the same recipe with every canary excluded) must give 0.")


def _accountant(row: pd.Series) -> float:
    return float(row["dp_epsilon"]) if pd.notna(row["dp_epsilon"]) else math.inf


def _bound_cell(row: pd.Series, prefix: str = "") -> Cell:
    eps = row.get(f"{prefix}eps_lower")
    if eps is None or pd.isna(eps):
        return Cell([MISSING], state="missing", title="not audited")
    lines = [f"ε ≥ {eps:.2f}", f"{row[f'{prefix}correct']:.0f}/{row[f'{prefix}guesses']:.0f} right (k = "
             f"{row[f'{prefix}k']:.0f}), m = {row[f'{prefix}m']:.0f}", f"ceiling {row[f'{prefix}ceiling']:.2f}"]
    return Cell(lines, strong=str(row["score"]) if not prefix and eps > 0 else "")  # the score that gave it


def _check(row: pd.Series) -> Cell:
    if row["status"] != "FINISHED":
        return Cell(["failed"], state="failed", title=str(row.get("error") or ""))
    if row["control"] == "placebo":
        ok = row["eps_lower"] == 0
        return Cell(["✓ pass" if ok else "✗ FAIL"], state="pass" if ok else "fail",
                    title="the audited recipe with every canary excluded must give a bound of 0 (5% error rate)")
    accountant = _accountant(row)
    if math.isinf(accountant):
        return Cell([MISSING], state="missing", title="no accountant: nothing to check the bound against")
    ok = row["eps_lower"] <= accountant  # the pooled bound: the per-kind ones are not corrected across kinds
    return Cell(["✓ ≤ accountant" if ok else "✗ ABOVE ACCOUNTANT"], state="pass" if ok else "fail")


def audit_sections(audits: pd.DataFrame) -> list[Section]:
    """One table of every audit (by setting, arch and defense, placebo last), or nothing without audits."""
    if audits.empty:
        return []
    kinds = [k for k in KINDS if f"{k}_eps_lower" in audits and audits[f"{k}_eps_lower"].notna().any()]
    section = Section(
        "privacy audits: empirical epsilon lower bound vs the accountant's epsilon",
        ["setting", "victim arch", "training defense", "control", "accountant ε (δ)", "ε lower bound, all canaries",
         *(f"{k} canaries" for k in kinds), "audited mIoU", "check"],
        notes=[NOTE + f" Confidence {audits['confidence'].dropna().iloc[0]:.0%}." if audits["confidence"].notna().any()
               else NOTE],
    )
    order = audits.assign(_placebo=audits["control"] != "none", _eps=audits.apply(_accountant, axis=1))
    for _, row in order.sort_values(["setting", "dataset", "arch", "_placebo", "_eps"]).iterrows():
        accountant = _accountant(row)
        delta = f" (δ = {row['delta']:.0e})" if pd.notna(row["delta"]) else ""
        section.rows.append([
            Cell([f"{row['setting']} {row['dataset']}"]), Cell([str(row["arch"])]), Cell([str(row["defense_label"])]),
            Cell([str(row["control"])]),
            Cell([("∞ (no DP)" if math.isinf(accountant) else f"{accountant:.2f}") + delta]),
            _bound_cell(row) if row["status"] == "FINISHED" else Cell(["failed"], state="failed"),
            *(_bound_cell(row, f"{k}_") for k in kinds),
            Cell([MISSING if pd.isna(row["miou_heldout"]) else f"{row['miou_heldout']:.3f}"]),
            _check(row),
        ])
    return [section]


def plot_audit(audits: pd.DataFrame, out) -> list:
    """Empirical epsilon (lower bound) against the accountant's, with the diagonal; the undefended model (no
    accountant) and the placebo at the right edge; each kind's bound next to the bound over all canaries."""
    from matplotlib.lines import Line2D

    done = audits[audits["status"] == "FINISHED"] if not audits.empty else audits
    if done.empty:
        return skip("audit epsilon plot", "no finished audit")
    finite = done["dp_epsilon"].dropna()
    right = 1.3 * float(finite.max()) if len(finite) else 4.0
    slots = {"none": right, "placebo": right * 1.15}  # x of the audits without an accountant
    fig = new_figure(8.0, 6.0)
    ax = fig.subplots()
    top = max(float(done["ceiling"].max()), float(done["eps_lower"].max()), float(finite.max()) if len(finite) else 1)
    edge = float(finite.max()) * 1.1 if len(finite) else 0.0
    handles = [ax.plot([0, edge], [0, edge], color="0.4", ls="--", lw=1, label="diagonal: bound = accountant ε")[0]]
    palette = colormaps["tab10"].colors
    series = [("eps_lower", "all canaries", "o")] + [
        (f"{k}_eps_lower", f"{k} canaries", m) for k, m in zip(KINDS, "^sD") if f"{k}_eps_lower" in done]
    groups = list(done.groupby(["setting", "dataset", "arch"], sort=True))
    for g, ((setting, dataset, arch), rows) in enumerate(groups):
        for s, (column, name, marker) in enumerate(series):
            rows_ok = rows.dropna(subset=[column])
            if rows_ok.empty:
                continue
            x = np.array([slots["placebo"] if c != "none" else (e if pd.notna(e) else slots["none"])
                          for c, e in zip(rows_ok["control"], rows_ok["dp_epsilon"])])
            x = x + (s + g * len(series) - (len(series) * len(groups) - 1) / 2) * 0.012 * right
            colour = palette[(s + g * len(series)) % len(palette)]
            placebo = (rows_ok["control"] != "none").to_numpy()
            y = rows_ok[column].to_numpy()
            ax.scatter(x[~placebo], y[~placebo], marker=marker, s=60, color=colour, edgecolor="k", linewidth=0.5,
                       zorder=3)
            ax.scatter(x[placebo], y[placebo], marker=marker, s=60, facecolor="none", edgecolor=colour,
                       linewidth=1.2, zorder=3)
            suffix = f" ({setting} {dataset} {arch})" if len(groups) > 1 else ""
            handles.append(Line2D([], [], ls="", marker=marker, color=colour, markeredgecolor="k",
                                  markeredgewidth=0.5, label=name + suffix))
    handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="0.3",
                          label="hollow: placebo, the same audit with every canary excluded (must be 0)"))
    ceiling = float(done["ceiling"].max())
    handles.append(ax.axhline(ceiling, color="0.6", ls=":", lw=1,
                              label=f"ceiling: every guess right ({done['m'].max():.0f} canaries)"))
    ticks = sorted(set(np.round(finite.to_numpy(), 2))) if len(finite) else []
    ax.set_xticks([*ticks, slots["none"], slots["placebo"]],
                  [*(f"{t:g}" for t in ticks), "no DP\n(ε = ∞)", "placebo"])
    ax.set(xlim=(0, slots["placebo"] * 1.08), ylim=(-0.05 * top, top * 1.12),
           xlabel="Accountant's ε (upper bound; DP-SGD)", ylabel="Empirical ε (one-run audit, lower bound)")
    ax.grid(True, alpha=0.3)
    confidence = done["confidence"].dropna()
    level = f"{confidence.iloc[0]:.0%} confidence, " if len(confidence) else ""
    ax.set_title(f"Privacy audit: empirical vs accounted ε ({level}δ as accounted)\n"
                 "on or below the diagonal: consistent with the DP guarantee")
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=2)
    return save(fig, out, "audit_epsilon")
