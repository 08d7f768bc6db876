"""Leaderboard tables from one invocation: tidy CSV, Markdown and a self-contained HTML page.

Both human formats render the same neutral table model (sections of rows of `Cell`s) through Jinja2 templates
(analysis/templates) with autoescaping, so Markdown and HTML can never disagree on a number and neither lets a
grid or dataset name inject markup. Both open on the key results (analysis.headline).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape

from analysis.aggregate import SELECTION_RULE, aggregate, comparable, strongest, worst_case
from analysis.audit import audit_sections
from analysis.headline import REAL, SYNTHETIC, data_line, dataset_label, key_results, null_tally, setting_heading, summary_lines
from analysis.matched import matched_sections
from analysis.runs import GridRuns, load_runs
from analysis.style import leak_colour
from analysis.table import MISSING, Cell, Section

CSV_COLUMNS = (
    "setting", "dataset", "data_source", "shadow_dataset", "shadow_data_source", "victim_arch", "shadow_arch", "shadow_overlap", "defense",
    "defense_params", "defense_label", "control", "attack", "representation", "attack_label", "strongest",
    "status", "n_seeds", "seeds", "n_failed", "error", "refused", "missing", "placebo_pass", "tuned",
)
CSV_METRICS = (
    "auc", "auc_ci_low", "auc_ci_high", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci_low", "tpr_at_1pct_fpr_ci_high",
    "tpr_at_0.1pct_fpr", "tpr_at_0.1pct_fpr_ci_low", "tpr_at_0.1pct_fpr_ci_high", "balanced_accuracy",
    "precision", "recall", "victim_miou", "dp_epsilon", "dp_delta", "calibration_auc", "n_members",
    "n_nonmembers", "n_groups", "n_excluded",
)
NO_CELLS = "This invocation has no attack cells yet."
LEGEND = (
    "Score tables: one row per defense setting and victim architecture, the attacker's worst case over shadow "
    "overlaps and architectures, among the attacks that ran against every defense of the setting (so each faced "
    "the same). AUC as mean ± std over seeds with the mean bootstrap interval in brackets (over groups of images "
    "where they share one), TPR at 1% FPR with its bootstrap interval (members and non-members resampled, the threshold re-estimated), the victim's held-out mIoU, and the "
    "members / non-members scored (images the attacker trained on are never scored). The "
    f"{SELECTION_RULE}. {MISSING} = not in the grid or not resolvable by the data; failed = every seed of every "
    "attack failed. Every cell and attack, with every metric, is in leaderboard.csv."
)
TEMPLATES = Path(__file__).with_name("templates")


def _num(mean: float, std: float = math.nan) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _count(value: float) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.0f}"


def _auc(row: pd.Series, prefix: str = "AUC ") -> str:
    interval = "" if math.isnan(row["auc_ci_low_mean"]) else f" [{row['auc_ci_low_mean']:.3f}, {row['auc_ci_high_mean']:.3f}]"
    return f"{prefix}{_num(row['auc_mean'], row['auc_std'])}{interval}"


def _row_header(key: tuple) -> list[Cell]:
    arch, overlap, *shadow = key
    return [Cell([str(arch)]), Cell([MISSING if math.isnan(overlap) else f"{overlap:g}"]), *(Cell([str(s)]) for s in shadow)]


def _tpr(row: pd.Series) -> str:
    tpr = _num(row["tpr_at_1pct_fpr_mean"], row["tpr_at_1pct_fpr_std"])
    if tpr != MISSING and not math.isnan(row["tpr_at_1pct_fpr_ci_low_mean"]):
        tpr += f" [{row['tpr_at_1pct_fpr_ci_low_mean']:.3f}, {row['tpr_at_1pct_fpr_ci_high_mean']:.3f}]"
    return tpr


def _shadow_text(overlap: float, shadow_arch: str, victim_arch: str) -> str:
    text = "independent" if math.isnan(overlap) else f"overlap {overlap:g}"
    return text if shadow_arch == victim_arch else f"{text}, {shadow_arch}"


def _by_shadow(rows: pd.DataFrame) -> str:
    """The strongest attack's AUC at each shadow overlap (and shadow arch) the attacker could use."""
    best = strongest(rows).sort_values(["shadow_overlap", "shadow_arch"])
    parts = [f"{'—' if math.isnan(r.shadow_overlap) else f'{r.shadow_overlap:g}'}"
             f"{'' if r.shadow_arch == r.victim_arch else '/' + r.shadow_arch}: {_num(r.auc_mean)}"
             for r in best.itertuples()]
    return " · ".join(parts) or MISSING


def _unscored(rows: pd.DataFrame) -> Cell:
    """Why a defense has no strongest attack: every run refused, failed or is unfinished."""
    if (rows["status"] == "refused").all():
        return Cell(["refused"], state="missing", title="refused: " + "; ".join(dict.fromkeys(rows["refused"])))
    errors = "; ".join(dict.fromkeys(e for error in rows["error"] for e in error.split("; ") if e))
    failed = (rows["status"] == "failed").any()
    return Cell(["failed" if failed else "unfinished"], state="failed", title=errors or "no finished run")


def _defense_row(rows: pd.DataFrame, worst: pd.DataFrame) -> list[Cell]:
    """One defense setting against one victim arch: the attacker's worst case over shadow overlaps and archs."""
    first = rows.iloc[0]
    head = [Cell([str(first["defense_label"])]), Cell([str(first["victim_arch"])])]
    if worst.empty:
        return head + [_unscored(rows)] + [Cell([MISSING], state="missing") for _ in range(len(SCORE_HEADER) - 3)]
    row = worst.iloc[0]
    cell = rows[(rows["shadow_overlap"].fillna(-1) == (-1 if math.isnan(row["shadow_overlap"]) else row["shadow_overlap"]))
                & (rows["shadow_arch"] == row["shadow_arch"])]
    others = [f"{r.attack_label}: AUC {_num(r.auc_mean)} (calibration {_num(r.calibration_auc_mean)})"
              if r.status == "ok" else f"{r.attack_label}: {r.status}" for r in cell.itertuples() if not r.strongest]
    notes = "; ".join(dict.fromkeys(n for n in (*others, *cell["missing"], *cell["error"]) if n))
    n_failed = int(rows["n_failed"].sum())
    seeds = f"{int(row['n_seeds'])}" + (f" (+{n_failed} run{'s' if n_failed > 1 else ''} failed)" if n_failed else "")
    return head + [
        Cell([str(row["attack_label"])], title=notes),
        Cell([_auc(row, prefix="")], title=notes, auc=row["auc_mean"]),
        Cell([_tpr(row)], title=row["missing"]),
        Cell([_num(row["victim_miou_mean"])], title=f"std over seeds {_num(row['victim_miou_std'])}"),
        Cell([_shadow_text(row["shadow_overlap"], row["shadow_arch"], row["victim_arch"])]),
        Cell([_by_shadow(rows)]),
        Cell([f"{_count(row['n_members_mean'])} / {_count(row['n_nonmembers_mean'])}"]),
        Cell([seeds], state="failed" if n_failed else "ok", title=_join(rows["error"])),
    ]


def _join(values: pd.Series) -> str:
    return "; ".join(dict.fromkeys(v for v in values if v))


SCORE_HEADER = ["defense", "victim arch", "strongest attack", "AUC ± std [interval]", "TPR@1%FPR [interval]",
                "victim mIoU", "worst-case shadow", "AUC by shadow overlap", "members / non-members", "seeds"]


def _score_section(setting_key: tuple, table: pd.DataFrame, sources: dict[str, str]) -> Section:
    """One row per defense setting and victim arch (the attacker's worst case), defenses in registry order."""
    section = Section(setting_heading(*setting_key, sources), list(SCORE_HEADER))
    worst = worst_case(table)
    for (_, label, arch), rows in table.groupby(["defense_rank", "defense_label", "victim_arch"], sort=True):
        section.rows.append(_defense_row(rows, worst[(worst["defense_label"] == label) & (worst["victim_arch"] == arch)]))
    return section


def _placebo_section(setting_key: tuple, table: pd.DataFrame, sources: dict[str, str]) -> Section:
    section = Section(
        f"placebo controls ({setting_heading(*setting_key, sources)}): a victim that never saw the members must give "
        "an AUC interval containing 0.5",
        ["victim arch", "shadow overlap", "shadow arch", "defense", "attack", "AUC [interval]", "null check"],
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
            + [Cell([row["defense_label"]]), Cell([row["attack_label"]]), Cell([_auc(row, prefix="")], auc=row["auc_mean"]),
               verdict]
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


def _shift(row: pd.Series) -> str:
    if math.isnan(row["shift_auc"]):
        return f"{MISSING} (too few groups to cross-fit)"
    return (f"{row['shift_auc']:.3f} (permutation null {row['shift_null_low']:.3f} to {row['shift_null_high']:.3f}, "
            f"p = {row['shift_p_value']:.2f})")


def blind_notes(blind: pd.DataFrame, setting_key: tuple) -> list[str]:
    """The setting's blind baseline and shift test (one line per seed), flagged when an interval excludes 0.5."""
    setting, dataset, shadow = setting_key
    rows = blind[(blind["setting"] == setting) & (blind["dataset"] == dataset) & (blind["shadow_dataset"] == shadow)]
    notes = []
    for _, row in rows.sort_values("seed").iterrows():
        flag = ("FLAGGED: members and non-members differ without any model; attack AUCs here mix membership "
                "with that shift" if row["flagged"] else "no shift detected")
        notes.append(f"Blind baseline (seed {int(float(row['seed']))}, no model queried): shadow-fitted AUC "
                     f"{row['blind_auc']:.3f} [{row['blind_auc_ci_low']:.3f}, {row['blind_auc_ci_high']:.3f}]; "
                     f"cross-fitted shift test AUC {_shift(row)}; {_count(row['n_groups'])} groups. {flag}.")
    return notes


def build_sections(table: pd.DataFrame, models: pd.DataFrame, blind: pd.DataFrame | None = None,
                   sources: dict[str, str] | None = None) -> list[Section]:
    """Score tables per dataset setting (with its blind baseline), each followed by its placebo controls; then
    the matched-utility tables and the victim models."""
    sources = sources or {}
    sections = []
    for setting_key, frame in table.groupby(["setting", "dataset", "shadow_dataset"], sort=True):
        scored = frame[frame["control"] == "none"]
        if not scored.empty:
            section = _score_section(setting_key, comparable(scored), sources)
            section.notes = blind_notes(blind, setting_key) if blind is not None and not blind.empty else []
            sections.append(section)
        placebo = frame[frame["control"] != "none"]
        if not placebo.empty:
            sections.append(_placebo_section(setting_key, placebo, sources))
    worst = worst_case(comparable(table))
    if not worst.empty:  # headings name the data source
        worst = worst.assign(**{c: [dataset_label(d, sources) for d in worst[c]] for c in ("dataset", "shadow_dataset")})
    sections += matched_sections(worst)
    victims = models[models["role"] == "victim"] if not models.empty else models
    if not victims.empty:
        sections.append(_victims_section(victims))
    return sections


_AUC = re.compile(r"^AUC (\d+(?:\.\d+)?)")


def _view(cell: Cell) -> dict[str, object]:
    """A cell as the HTML template draws it: a cell showing an AUC (its `auc`, or a first line that starts
    with one) is shaded by it and sorts by it."""
    found = _AUC.match(cell.lines[0]) if cell.state == "ok" and cell.lines and cell.auc is None else None
    auc = float(found[1]) if found else cell.auc if cell.state == "ok" and cell.auc is not None and not math.isnan(cell.auc) else None
    value = f"{auc:.3f}" if auc is not None else ""
    state = f"{cell.state} auc" if value and len(cell.lines) == 1 else cell.state  # an AUC alone: kept on one line
    return {"state": state, "strong": cell.strong, "lines": cell.lines, "title": cell.title,
            "value": value, "background": leak_colour(float(value)) if value else ""}


def _markdown_cell(cell: Cell | str) -> Markup:
    """A GitHub table cell: HTML-escaped (a name like `<img onerror=...>` stays text), pipes escaped, lines
    joined by <br>, the strong lead in bold."""
    if isinstance(cell, str):
        cell = Cell([cell])
    parts = ([f"**{escape(cell.strong)}**"] if cell.strong else []) + [str(escape(line)) for line in cell.lines]
    return Markup("<br>".join(parts).replace("|", "\\|").replace("\n", " "))


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, keep_trailing_newline=True,
                      trim_blocks=False, lstrip_blocks=False)
    env.filters["cell"] = _markdown_cell
    return env


def _context(sections: list[Section], runs: GridRuns, table: pd.DataFrame | None) -> dict[str, object]:
    """What both templates show: the key results first, then the sections."""
    table = table if table is not None else pd.DataFrame()
    blind = getattr(runs, "blind", pd.DataFrame())
    sources = getattr(runs, "sources", {}) or {}
    datasets = sorted(set(table["dataset"]) | set(table["shadow_dataset"])) if not table.empty else sorted(sources)
    badges = [s for s in (SYNTHETIC, REAL) if s in {sources.get(d) for d in datasets}]
    return {
        "experiment": runs.experiment, "parent_run_id": runs.parent_run_id, "legend": LEGEND, "no_cells": NO_CELLS,
        "source_suffix": f" ({' and '.join(badges)} data)" if badges else "", "source_badges": badges,
        "data_line": data_line(datasets, sources),
        "key_results": key_results(table, sources) if not table.empty else [],
        "nulls": null_tally(table if not table.empty else pd.DataFrame(columns=["control"]), blind),
        "sections": sections,
        "scale": [{"label": f"{a:.1f}", "background": leak_colour(a)} for a in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)],
    }


def to_markdown(sections: list[Section], runs: GridRuns, table: pd.DataFrame | None = None) -> str:
    """GitHub-flavoured Markdown, from templates/leaderboard.md.j2; line breaks inside cells as <br>."""
    return _environment().get_template("leaderboard.md.j2").render(_context(sections, runs, table))


def to_html(sections: list[Section], runs: GridRuns, table: pd.DataFrame | None = None) -> str:
    """One self-contained page (inline CSS and script, no external assets) from templates/leaderboard.html.j2:
    the key results, then AUC cells coloured by leakage, headers that stay in view and sort on click, a filter."""
    page = {**_context(sections, runs, table)}
    page["sections"] = [Section(s.heading, s.header, [[_view(c) for c in row] for row in s.rows], s.notes)
                        for s in sections]
    return _environment().get_template("leaderboard.html.j2").render(page)


def to_csv(table: pd.DataFrame, sources: dict[str, str] | None = None) -> pd.DataFrame:
    """Tidy: one row per cell and attack, each metric's mean and std over seeds, and where the data came from."""
    sources = sources or {}
    metrics = [f"{m}_{s}" for m in CSV_METRICS for s in ("mean", "std")]
    out = table.reindex(columns=[*CSV_COLUMNS, *metrics])
    out["data_source"] = table["dataset"].map(sources) if "dataset" in table else None
    out["shadow_data_source"] = table["shadow_dataset"].map(sources) if "shadow_dataset" in table else None
    return out


KEY_RESULTS = "key_results.txt"


def write_leaderboard(tracking_uri: str, experiment: str | None, out: Path, parent_run_id: str | None = None) -> list[Path]:
    """Write leaderboard.{csv,md,html} and key_results.txt (what the end of a run prints) for an invocation
    (default: the experiment's latest) into `out`."""
    runs = load_runs(tracking_uri, experiment, parent_run_id)
    table = aggregate(runs.cells)
    sections = build_sections(table, runs.models, runs.blind, runs.sources) + audit_sections(runs.audits)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.html", out / KEY_RESULTS]
    to_csv(table, runs.sources).to_csv(paths[0], index=False)
    paths[1].write_text(to_markdown(sections, runs, table), encoding="utf-8")
    paths[2].write_text(to_html(sections, runs, table), encoding="utf-8")
    paths[3].write_text("\n".join(summary_lines(table, runs.blind, runs.sources)) + "\n", encoding="utf-8")
    return paths
