"""Leaderboard tables from one invocation: tidy CSV, Markdown and a self-contained HTML page.

Both human formats render the same neutral table model (sections of rows of `Cell`s), so Markdown and HTML
can never disagree on a number.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pandas as pd

from analysis.aggregate import SELECTION_RULE, aggregate, comparable, worst_case
from analysis.audit import audit_sections
from analysis.matched import matched_sections
from analysis.runs import GridRuns, load_runs
from analysis.table import MISSING, Cell, Section

CSV_COLUMNS = (
    "setting", "dataset", "shadow_dataset", "victim_arch", "shadow_arch", "shadow_overlap", "defense",
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
    "Each cell: the strongest attack (bold), its ROC-AUC as mean ± std over seeds with the mean bootstrap "
    "interval in brackets (over groups of images where they share one), TPR at 1% FPR with its Clopper-Pearson "
    "interval, the victim's held-out mIoU, and the number of members / non-members scored (images the "
    f"attacker trained on are never scored). The {SELECTION_RULE}. {MISSING} = not in the grid, not resolvable "
    "by the data, or refused by the attack (hover for why); failed = every seed of every attack failed."
)


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
    sections += matched_sections(worst_case(comparable(table)))
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
        out += [f"## {section.heading}", ""] + [f"> {note}" for note in section.notes] + ([""] if section.notes else [])
        out += ["| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
        out += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in section.rows]
        out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;background:#fff}
h1{font-size:1.5em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.6em 0 .5em}
p.legend{max-width:70em;color:#555;margin:.4em 0}
p.note{max-width:90em;margin:.3em 0;padding:.3em .6em;border-left:3px solid #9ab;background:#f4f7fa}
p.note.flagged{border-left-color:#c00;background:#fdecea;font-weight:600}
.tools{position:sticky;top:0;z-index:5;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd;
  display:flex;flex-wrap:wrap;gap:.5em 1.5em;align-items:center;font-size:13px}
.tools input{font:inherit;padding:4px 8px;width:26em;max-width:90vw;border:1px solid #aaa;border-radius:3px}
#count{color:#555}
.scale{display:flex;align-items:center;gap:2px} .scale span{padding:2px 7px;border-radius:2px;border:1px solid #ccc}
.scale .sep{margin-left:1em}
.wrap{overflow:auto;max-height:80vh;border:1px solid #bbb;margin-bottom:1.5em;width:max-content;max-width:100%}
table{border-collapse:separate;border-spacing:0;font-size:12px;line-height:1.35}
th,td{border-right:1px solid #d8d8d8;border-bottom:1px solid #d8d8d8;padding:3px 7px;text-align:left;
  vertical-align:top;white-space:nowrap}
thead th{position:sticky;top:0;z-index:2;background:#eceff3;cursor:pointer;user-select:none;border-bottom:2px solid #999}
thead th:hover{background:#dde3ea}
thead th::after{content:" \\2195";color:#aaa;font-size:11px}
thead th[aria-sort=ascending]::after{content:" \\25B2";color:#333}
thead th[aria-sort=descending]::after{content:" \\25BC";color:#333}
tbody td:first-child{font-weight:600}
.key{position:sticky;left:0;z-index:1} tbody td.key{background:#fafafa} thead th.key{z-index:3}
.key.last{box-shadow:inset -2px 0 0 #999}
tbody tr:hover td{outline:1px solid #666;outline-offset:-1px}
td b{color:inherit}
td.failed,.scale .failed{background:repeating-linear-gradient(135deg,#eee 0 6px,#ddd 6px 12px);color:#7a1010}
td.missing{color:#999;text-align:center}
td.pass,.scale .pass{background:#d9f2d9;color:#05570a;font-weight:600}
td.fail,.scale .fail{background:#ffd6d6;color:#a00;font-weight:bold;outline:2px solid #c00;outline-offset:-2px}
tr[hidden]{display:none}
"""

# Leakage colour scale for AUC cells: 0.5 (chance) is white, 1.0 is dark red (ColorBrewer "Reds").
_REDS = ("#ffffff", "#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15")
_AUC = re.compile(r"^AUC (\d+(?:\.\d+)?)")


def _luminance(rgb: tuple[float, float, float]) -> float:
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _leak_colours(auc: float) -> tuple[str, str]:
    """(background, text colour) for an AUC: interpolated on _REDS; AUCs at or below 0.5 are white."""
    t = min(max((auc - 0.5) / 0.5, 0.0), 1.0) * (len(_REDS) - 1)
    i = min(int(t), len(_REDS) - 2)
    lo, hi = (tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in _REDS[i:i + 2])
    rgb = tuple(a + (b - a) * (t - i) for a, b in zip(lo, hi))
    background = "#" + "".join(f"{round(v):02x}" for v in rgb)
    lum = _luminance(rgb)  # black or white text, whichever contrasts more: never below 4.5:1 on this scale
    return background, ("#000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#fff")


def _html_cell(cell: Cell) -> str:
    """A <td>; a cell that leads with an AUC is coloured by it and sorts by it (data-v)."""
    lead = f"<b>{html.escape(cell.strong)}</b><br>" if cell.strong else ""
    body = "<br>".join(html.escape(line) for line in cell.lines)
    title = f' title="{html.escape(cell.title)}"' if cell.title else ""
    found = _AUC.match(cell.lines[0]) if cell.state == "ok" and cell.lines else None
    if found:
        background, colour = _leak_colours(float(found[1]))
        return (f'<td class="{cell.state}" style="background:{background};color:{colour}" data-v="{found[1]}"{title}>'
                f"{lead}{body}</td>")
    return f'<td class="{cell.state}"{title}>{lead}{body}</td>'


# Sort (click or Enter on a header; numbers first high-to-low, text A-Z; again to reverse; blanks stay last)
# and filter (rows containing every word typed). Inline and dependency-free: the page works offline.
_SCRIPT = """
(function(){
  var MISSING = '\\u2014';
  function key(td){
    if(!td) return null;
    var v = td.getAttribute('data-v'), t = v !== null ? v : td.textContent.trim();
    if(t === '' || t === MISSING) return null;
    return /^-?\\d+(\\.\\d+)?$/.test(t) ? parseFloat(t) : t.toLowerCase();
  }
  function sortBy(th){
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.some(function(r){ return typeof key(r.cells[col]) === 'number'; });
    var now = th.getAttribute('aria-sort');
    var dir = now ? (now === 'ascending' ? -1 : 1) : (numeric ? -1 : 1);
    Array.prototype.forEach.call(th.parentNode.cells, function(c){ c.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    rows.sort(function(a, b){
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if(x === null || y === null) return (x === null) - (y === null);
      if(typeof x !== typeof y) return typeof x === 'number' ? -1 : 1;
      return dir * (typeof x === 'number' ? x - y : x.localeCompare(y));
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  document.querySelectorAll('thead th').forEach(function(th){
    th.tabIndex = 0;
    th.title = 'sort by this column (click again to reverse)';
    th.addEventListener('click', function(){ sortBy(th); });
    th.addEventListener('keydown', function(e){
      if(e.key === 'Enter' || e.key === ' '){ e.preventDefault(); sortBy(th); }
    });
  });
  var box = document.getElementById('filter'), count = document.getElementById('count');
  function filter(){
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0, total = 0;
    document.querySelectorAll('tbody tr').forEach(function(tr){
      var text = tr.textContent.toLowerCase();
      var keep = words.every(function(w){ return text.indexOf(w) >= 0; });
      tr.hidden = !keep; total += 1; shown += keep ? 1 : 0;
    });
    count.textContent = words.length ? shown + ' of ' + total + ' rows' : '';
  }
  box.addEventListener('input', function(){ filter(); pin(); });
  // Keep a table's row keys in view while it scrolls sideways: the columns left of its first AUC column
  // (the first column where a table has none), pinned at their current widths; nothing for a table that fits.
  function pin(){
    document.querySelectorAll('.wrap table').forEach(function(table){
      var head = table.tHead.rows[0], rows = Array.prototype.slice.call(table.tBodies[0].rows), keys = 0;
      table.querySelectorAll('.key').forEach(function(c){ c.classList.remove('key', 'last'); c.style.left = ''; });
      var wrap = table.parentNode;
      if(wrap.scrollWidth <= wrap.clientWidth + 1) return;
      rows.forEach(function(r){
        var i = Array.prototype.findIndex.call(r.cells, function(c){ return c.hasAttribute('data-v'); });
        if(i > 0 && (keys === 0 || i < keys)) keys = i;
      });
      keys = keys || 1;
      var left = 0;
      for(var i = 0; i < keys && i < head.cells.length; i++){
        var cells = [head.cells[i]].concat(rows.map(function(r){ return r.cells[i]; }));
        cells.forEach(function(c){
          if(!c) return;
          c.classList.add('key'); c.classList.toggle('last', i === keys - 1); c.style.left = left + 'px';
        });
        left += head.cells[i].getBoundingClientRect().width;
      }
    });
  }
  window.addEventListener('resize', pin);
  filter();
  pin();
})();
"""


def _scale_html() -> str:
    """The colour key: AUC swatches from 0.5 to 1.0, then the placebo and failure styles."""
    swatches = []
    for auc in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        background, colour = _leak_colours(auc)
        swatches.append(f'<span style="background:{background};color:{colour}">{auc:.1f}</span>')
    return ('<div class="scale">AUC&nbsp;' + "".join(swatches)
            + '<span class="pass sep">✓ pass</span><span class="fail">✗ FAIL</span>'
            + '<span class="failed sep">failed</span></div>')


def to_html(sections: list[Section], runs: GridRuns) -> str:
    """One self-contained page (inline CSS and script, no external assets): AUC cells coloured by leakage,
    headers that stay in view and sort on click, a filter box; wide tables scroll inside their section."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>segleak leaderboard: {html.escape(runs.experiment)}</title><style>{_CSS}</style></head><body>",
        f"<h1>segleak leaderboard: {html.escape(runs.experiment)}</h1>",
        f"<p>Invocation run <code>{html.escape(runs.parent_run_id)}</code>.</p>",
        f'<p class="legend">{html.escape(LEGEND)} Hover a cell for the other attacks and any error; '
        "click a column header to sort by it.</p>",
        '<div class="tools"><label>Filter rows <input id="filter" type="search" '
        'placeholder="e.g. pspnet 0.5" autocomplete="off"></label><span id="count"></span>'
        f"{_scale_html()}</div>",
    ]
    if not sections:
        parts.append(f"<p>{NO_CELLS}</p>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts += [f'<p class="note{" flagged" if "FLAGGED" in note else ""}">{html.escape(note)}</p>'
                  for note in section.notes]
        parts.append('<div class="wrap"><table><thead><tr>')
        parts += [f'<th scope="col">{html.escape(h)}</th>' for h in section.header]
        parts.append("</tr></thead><tbody>")
        parts += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in section.rows]
        parts.append("</tbody></table></div>")
    parts.append(f"<script>{_SCRIPT}</script>")
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

    sections += audit_sections(runs.audits)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.html"]
    to_csv(table).to_csv(paths[0], index=False)
    paths[1].write_text(to_markdown(sections, runs), encoding="utf-8")
    paths[2].write_text(to_html(sections, runs), encoding="utf-8")
    return paths
