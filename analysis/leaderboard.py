"""Leaderboard tables from one invocation: tidy CSV, Markdown and a self-contained HTML page.

Both human formats render the same neutral table model (sections of rows of `Cell`s), so Markdown and HTML
can never disagree on a number.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.aggregate import AUC_CHANCE, SELECTION_RULE, aggregate
from analysis.runs import GridRuns, load_runs

MISSING = "—"
CSV_COLUMNS = (
    "setting", "dataset", "shadow_dataset", "victim_arch", "shadow_arch", "shadow_overlap", "defense",
    "defense_params", "defense_label", "control", "attack", "representation", "attack_label", "strongest",
    "status", "n_seeds", "seeds", "n_failed", "error", "refused", "missing", "placebo_pass",
)
CSV_METRICS = (
    "auc", "auc_ci_low", "auc_ci_high", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci_low", "tpr_at_1pct_fpr_ci_high",
    "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci_low", "tpr_at_0.1pct_fpr_ci_high", "balanced_accuracy",
    "precision", "recall", "victim_miou", "dp_epsilon", "dp_delta", "calibration_auc", "n_members",
    "n_nonmembers", "n_groups", "n_excluded",
)
NO_CELLS = "This invocation has no attack cells yet."
LEGEND = (
    "Each cell: the strongest attack (bold), its ROC-AUC as mean ± std over seeds with the mean bootstrap "
    "interval in brackets (over groups of images where they share one), TPR at 1% FPR with its Clopper-Pearson "
    "interval, the victim's held-out mIoU, and the number of members / non-members scored (images the "
    f"attacker trained on are never scored). The {SELECTION_RULE}. {MISSING} = not in the grid, not resolvable "
    "by the data, or refused by the attack (hover for why); failed = every seed of every attack failed."
)


@dataclass
class Cell:
    """One table cell: its text lines, an optional bold lead, a state for styling, a tooltip."""

    lines: list[str]
    strong: str = ""
    state: str = "ok"
    title: str = ""


@dataclass
class Section:
    """One table with a heading (a dataset setting, or its placebo controls)."""

    heading: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _num(mean: float, std: float = math.nan) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _count(value: float) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.0f}"


def _auc(row: pd.Series) -> str:
    interval = "" if math.isnan(row["auc_ci_low_mean"]) else f" [{row['auc_ci_low_mean']:.3f}, {row['auc_ci_high_mean']:.3f}]"
    return f"AUC {_num(row['auc_mean'], row['auc_std'])}{interval}"


def _score_cell(group: pd.DataFrame) -> Cell:
    """The strongest attack of a cell, or why there is none."""
    if group.empty:
        return Cell([MISSING], state="missing", title="not in this grid")
    best = group[group["strongest"]]
    if best.empty and (group["status"] == "refused").all():
        return Cell([MISSING], state="missing", title="refused: " + "; ".join(dict.fromkeys(group["refused"])))
    if best.empty:
        failed = (group["status"] == "failed").any()
        errors = "; ".join(dict.fromkeys(e for error in group["error"] for e in error.split("; ") if e))
        return Cell(["failed" if failed else "unfinished"], state="failed", title=errors or "no finished run")
    row = best.iloc[0]
    tpr = _num(row["tpr_at_1pct_fpr_mean"], row["tpr_at_1pct_fpr_std"])
    if tpr != MISSING and not math.isnan(row["tpr_at_1pct_fpr_ci_low_mean"]):
        tpr += f" [{row['tpr_at_1pct_fpr_ci_low_mean']:.3f}, {row['tpr_at_1pct_fpr_ci_high_mean']:.3f}]"
    lines = [
        _auc(row),
        f"TPR@1%FPR {tpr}",
        f"mIoU {_num(row['victim_miou_mean'], row['victim_miou_std'])}",
        f"n = {_count(row['n_members_mean'])} / {_count(row['n_nonmembers_mean'])}",
    ]
    n_failed = int(group["n_failed"].sum())
    if n_failed:
        lines.append(f"{n_failed} run{'s' if n_failed > 1 else ''} failed")
    others = [f"{r.attack_label}: AUC {_num(r.auc_mean)} (calibration {_num(r.calibration_auc_mean)})"
              if r.status == "ok" else f"{r.attack_label}: {r.status}" for r in group.itertuples() if not r.strongest]
    notes = [n for n in (*others, *group["missing"], *group["error"]) if n]
    return Cell(lines, strong=str(row["attack_label"]), title="; ".join(dict.fromkeys(notes)))


def _row_header(key: tuple) -> list[Cell]:
    arch, overlap, *shadow = key
    return [Cell([str(arch)]), Cell([MISSING if math.isnan(overlap) else f"{overlap:g}"]), *(Cell([str(s)]) for s in shadow)]


def _setting_heading(setting: str, dataset: str, shadow: str) -> str:
    return f"{setting}: victim {dataset}, shadow {shadow}"


def _score_section(setting_key: tuple, table: pd.DataFrame) -> Section:
    with_shadow = bool((table["shadow_arch"] != table["victim_arch"]).any())
    keys = ["victim_arch", "shadow_overlap", *(["shadow_arch"] if with_shadow else [])]
    labels = list(dict.fromkeys(table.sort_values("defense_rank")["defense_label"]))
    section = Section(
        _setting_heading(*setting_key),
        ["victim arch", "shadow overlap", *(["shadow arch"] if with_shadow else []), *labels],
    )
    for key, rows in table.groupby(keys, dropna=False, sort=True):
        section.rows.append(
            _row_header(key) + [_score_cell(rows[rows["defense_label"] == label]) for label in labels]
        )
    return section


def _placebo_section(setting_key: tuple, table: pd.DataFrame) -> Section:
    section = Section(
        f"placebo controls ({_setting_heading(*setting_key)}): a victim that never saw the members must give "
        "an AUC interval containing 0.5",
        ["victim arch", "shadow overlap", "shadow arch", "defense", "attack", "AUC", "null check"],
    )
    for _, row in table.iterrows():
        if row["status"] != "ok":
            verdict = Cell([row["status"]], state="failed", title=row["error"])
        elif row["placebo_pass"] is None:
            verdict = Cell([MISSING], state="missing", title="no interval logged")
        else:
            passed = bool(row["placebo_pass"])
            verdict = Cell(["✓ pass" if passed else "✗ FAIL"], state="pass" if passed else "fail")
        section.rows.append(
            _row_header((row["victim_arch"], row["shadow_overlap"], row["shadow_arch"]))
            + [Cell([row["defense_label"]]), Cell([row["attack_label"]]), Cell([_auc(row)]), verdict]
        )
    return section


def _victims_section(models: pd.DataFrame) -> Section:
    """The victims' train vs held-out mIoU: the generalisation gap that membership inference feeds on."""
    section = Section(
        "victim models: training vs held-out mIoU",
        ["dataset", "split", "arch", "training defense", "seed", "n_train", "mIoU train", "mIoU held-out", "gap", "DP ε"],
    )
    for _, row in models.sort_values(["dataset", "split", "arch", "train_defense", "seed"]).iterrows():
        if row["status"] == "FINISHED":
            numbers = [row["miou_train"], row["miou_heldout"], row["miou_train"] - row["miou_heldout"], row["dp_epsilon"]]
            values = [Cell([_num(v)], state="missing" if math.isnan(v) else "ok") for v in numbers]
        else:
            values = [Cell([row["status"].lower()], state="failed")] + [Cell([MISSING], state="missing")] * 3
        section.rows.append([Cell([str(row[k])]) for k in ("dataset", "split", "arch", "train_defense", "seed", "n_train")] + values)
    return section


def _interval(row: pd.Series, prefix: str) -> str:
    return (f"{row[f'{prefix}_auc']:.3f} [{row[f'{prefix}_auc_ci_low']:.3f}, {row[f'{prefix}_auc_ci_high']:.3f}]"
            if not math.isnan(row[f"{prefix}_auc"]) else MISSING)


def blind_notes(blind: pd.DataFrame, setting_key: tuple) -> list[str]:
    """The setting's blind baseline and shift test (one line per seed), flagged when an interval excludes 0.5."""
    setting, dataset, shadow = setting_key
    rows = blind[(blind["setting"] == setting) & (blind["dataset"] == dataset) & (blind["shadow_dataset"] == shadow)]
    notes = []
    for _, row in rows.sort_values("seed").iterrows():
        flag = ("FLAGGED: members and non-members differ without any model; attack AUCs here mix membership "
                "with that shift" if row["flagged"] else f"both intervals contain {AUC_CHANCE}")
        notes.append(f"Blind baseline (seed {row['seed']}, no model queried): shadow-fitted AUC "
                     f"{_interval(row, 'blind')}; cross-fitted shift test AUC {_interval(row, 'shift')}; "
                     f"{_count(row['n_groups'])} groups. {flag}.")
    return notes


def build_sections(table: pd.DataFrame, models: pd.DataFrame, blind: pd.DataFrame | None = None) -> list[Section]:
    """Score tables per dataset setting (with its blind baseline), each followed by its placebo controls; then
    the victim models."""
    sections = []
    for setting_key, frame in table.groupby(["setting", "dataset", "shadow_dataset"], sort=True):
        scored = frame[frame["control"] == "none"]
        if not scored.empty:
            section = _score_section(setting_key, scored)
            section.notes = blind_notes(blind, setting_key) if blind is not None and not blind.empty else []
            sections.append(section)
        placebo = frame[frame["control"] != "none"]
        if not placebo.empty:
            sections.append(_placebo_section(setting_key, placebo))
    victims = models[models["role"] == "victim"]
    if not victims.empty:
        sections.append(_victims_section(victims))
    return sections


def _markdown_cell(cell: Cell) -> str:
    lead = f"**{cell.strong}**<br>" if cell.strong else ""
    return (lead + "<br>".join(cell.lines)).replace("|", "\\|")


def to_markdown(sections: list[Section], runs: GridRuns) -> str:
    """GitHub-flavoured Markdown; line breaks inside cells as <br>."""
    out = [f"# segleak leaderboard: {runs.experiment}", "", f"Invocation run `{runs.parent_run_id}`.", "", LEGEND, ""]
    if not sections:
        out += [NO_CELLS, ""]
    for section in sections:
        out += [f"## {section.heading}", ""] + [f"> {note}" for note in section.notes] + (["" ] if section.notes else [])
        out += ["| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
        out += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in section.rows]
        out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.failed{background:#fde2e2;color:#a00} td.missing{color:#999;text-align:center}
td.pass{background:#e2f5e2;color:#060} td.fail{background:#fde2e2;color:#a00;font-weight:bold}
b{color:#0645ad} p.legend{max-width:60em;color:#555}
"""


def _html_cell(cell: Cell) -> str:
    lead = f"<b>{html.escape(cell.strong)}</b><br>" if cell.strong else ""
    body = "<br>".join(html.escape(line) for line in cell.lines)
    title = f' title="{html.escape(cell.title)}"' if cell.title else ""
    return f'<td class="{cell.state}"{title}>{lead}{body}</td>'


def to_html(sections: list[Section], runs: GridRuns) -> str:
    """One page with inline CSS and no external assets; hover a cell for other attacks and errors."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>segleak leaderboard: {html.escape(runs.experiment)}</title><style>{_CSS}</style></head><body>",
        f"<h1>segleak leaderboard: {html.escape(runs.experiment)}</h1>",
        f"<p>Invocation run <code>{html.escape(runs.parent_run_id)}</code>.</p>",
        f'<p class="legend">{html.escape(LEGEND)} Hover a cell for the other attacks and any error.</p>',
    ]
    if not sections:
        parts.append(f"<p>{NO_CELLS}</p>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts += [f'<p class="note">{html.escape(note)}</p>' for note in section.notes]
        parts.append("<table><thead><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in section.header]
        parts.append("</tr></thead><tbody>")
        parts += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in section.rows]
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_csv(table: pd.DataFrame) -> pd.DataFrame:
    """Tidy: one row per cell and attack, each metric's mean and std over seeds."""
    metrics = [f"{m}_{s}" for m in CSV_METRICS for s in ("mean", "std")]
    return table.reindex(columns=[*CSV_COLUMNS, *metrics])


def write_leaderboard(tracking_uri: str, experiment: str | None, out: Path, parent_run_id: str | None = None) -> list[Path]:
    """Write leaderboard.{csv,md,html} for an invocation (default: the experiment's latest) into `out`."""
    runs = load_runs(tracking_uri, experiment, parent_run_id)
    table = aggregate(runs.cells)
    sections = build_sections(table, runs.models, runs.blind)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.html"]
    to_csv(table).to_csv(paths[0], index=False)
    paths[1].write_text(to_markdown(sections, runs), encoding="utf-8")
    paths[2].write_text(to_html(sections, runs), encoding="utf-8")
    return paths
