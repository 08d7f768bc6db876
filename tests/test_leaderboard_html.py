"""The leaderboard page and its Markdown twin, rendered from a small aggregated grid (real `aggregate`, real
sections, real Jinja2 templates): the key results first with the data source named, one row per defense,
leakage colours with legible text, hostile names escaped in both formats; and, where Chromium is installed,
the page as a browser renders and runs it at 1280 px (fits, sorts, filters by defense and by attack)."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis.aggregate import aggregate
from analysis.leaderboard import TEMPLATES, _environment, build_sections, to_html, to_markdown
from analysis.runs import defense_label, defense_sort_key
from analysis.schema import CELL_METRICS
from analysis.style import LEAK_CMAP, leak_colour

CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<img src=x onerror="alert(1)"><script>alert(2)</script>&"'
DEFENSES = [("none", {}), ("argmax", {}), ("gaussian", {"sigma": 0.1}), ("gaussian", {"sigma": 0.5}),
            ("temperature", {"t": 2}), ("topk", {"k": 1}), ("dp_sgd", {"noise_multiplier": 1.0}),
            ("label_smoothing", {"eps": 0.1}), ("mixup", {"alpha": 0.4}), ("weight_decay", {"value": 0.05}),
            ("early_stopping", {"fraction": 0.5})]
ATTACKS = [("patch", "slm", "patch/slm"), ("loss_threshold", "statistic", "loss_threshold")]
ARCHS = ("pspnet", "upernet")


def _run(i: int, **values: object) -> dict:
    auc = float(values.pop("auc", 0.6))
    base = {"run_id": f"run{i}", "status": "FINISHED", "dataset": "cityscapes", "shadow_dataset": "cityscapes",
            "setting": "dependent", "control": "none", "seed": 0, "error": "", "refused": None, "tuned": None,
            "missing": "", "artifact_uri": "", "auc": auc, "auc_ci_low": auc - 0.03, "auc_ci_high": auc + 0.03,
            "calibration_auc": auc, "tpr_at_1pct_fpr": round(auc - 0.5, 3) / 2, "n_members": 200.0,
            "n_nonmembers": 200.0}
    return base | values


def _cells() -> pd.DataFrame:
    """11 defenses x 2 archs x 2 overlaps x 2 attacks x 2 seeds (dependent; the strongest attack has a hostile
    name), an independent setting whose shadow dataset has one too, one failed defense, a passing and a
    failing placebo."""
    rows = []
    for d, (defense, params) in enumerate(DEFENSES):
        for a, arch in enumerate(ARCHS):
            for overlap in (0.0, 0.5):
                for k, (attack, rep, label) in enumerate(ATTACKS):
                    for seed in (0, 1):
                        auc = 0.95 - 0.04 * d - 0.02 * a + 0.03 * overlap - 0.05 * k + 0.005 * seed
                        failed = defense == "argmax" and arch == "upernet"
                        rows.append(_run(len(rows), victim_arch=arch, shadow_arch=arch, shadow_overlap=overlap,
                                         defense=defense, defense_params=json.dumps(params), attack=attack,
                                         representation=rep, attack_label=EVIL if k == 0 else label,
                                         seed=seed, auc=auc, victim_miou=0.62 - 0.01 * d,
                                         status="FAILED" if failed else "FINISHED",
                                         error="RuntimeError: argmax broke" if failed else ""))
    for defense, params in DEFENSES[:3]:
        rows.append(_run(len(rows), victim_arch="pspnet", shadow_arch="pspnet", shadow_overlap=float("nan"),
                         shadow_dataset=EVIL, setting="independent", defense=defense,
                         defense_params=json.dumps(params), attack="patch", representation="slm",
                         attack_label="patch/slm", auc=0.7, victim_miou=0.6))
    for label, auc, low, high in (("patch/slm", 0.51, 0.45, 0.57), ("loss_threshold", 0.58, 0.55, 0.61)):
        rows.append(_run(len(rows), victim_arch="pspnet", shadow_arch="pspnet", shadow_overlap=0.0, defense="none",
                         defense_params="{}", attack=label.split("/")[0], representation="slm", attack_label=label,
                         control="placebo", auc=auc) | {"auc_ci_low": low, "auc_ci_high": high})
    frame = pd.DataFrame(rows)
    params = frame["defense_params"].map(json.loads)
    frame["defense_label"] = [defense_label(d, p) for d, p in zip(frame["defense"], params)]
    frame["defense_key"] = [defense_sort_key(d, p) for d, p in zip(frame["defense"], params)]
    for name in CELL_METRICS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce") if name in frame else float("nan")
    return frame


SOURCES = {"cityscapes": "synthetic", EVIL: "synthetic"}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return aggregate(_cells())


@pytest.fixture(scope="module")
def runs() -> SimpleNamespace:
    return SimpleNamespace(experiment=f"segleak-test {EVIL}", parent_run_id="abc123", sources=SOURCES,
                           blind=pd.DataFrame())


@pytest.fixture(scope="module")
def sections(table: pd.DataFrame) -> list:
    return build_sections(table, pd.DataFrame(), None, SOURCES)


@pytest.fixture(scope="module")
def page(sections: list, runs: SimpleNamespace, table: pd.DataFrame) -> str:
    return to_html(sections, runs, table)


@pytest.fixture(scope="module")
def markdown(sections: list, runs: SimpleNamespace, table: pd.DataFrame) -> str:
    return to_markdown(sections, runs, table)


class _Cells(HTMLParser):
    """Every <td>'s attributes and text, and every <script>'s attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.scripts: list[dict[str, str | None]] = []
        self._td: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self._td = {k: v or "" for k, v in attrs} | {"text": ""}
        elif tag == "script":
            self.scripts.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        if self._td is not None:
            self._td["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._td is not None:
            self.cells.append(self._td)
            self._td = None


def _parsed(page: str) -> _Cells:
    parser = _Cells()
    parser.feed(page)
    return parser


def test_key_results_come_first_and_name_the_synthetic_data(page: str, markdown: str) -> None:
    box = page.index('class="keyresults"')
    assert box < page.index("<table>") and box < page.index('class="legend"')
    key = page[box:page.index("</section>")]
    assert "SYNTHETIC: " in key and "not its real images" in key
    assert "Undefended pspnet leaks AUC 0.968 [0.938, 0.998]" in key  # worst case: overlap 0.5, patch/slm
    assert "(strongest attack &lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in key and "shadow overlap 0.5)" in key
    # within mIoU - 0.05 of the undefended 0.62, the least-leaking defense is the last one that keeps 0.57
    assert "At mIoU ≥ 0.570 (undefended − 0.05) the least leakage is topk k=1: AUC 0.768" in key
    assert "Null checks: CHECK FAILED (placebo 1/2 pass, 1 FAIL; no blind baseline)." in key
    assert '<span class="source synthetic">synthetic data</span>' in page
    assert "dependent: victim cityscapes (synthetic), shadow cityscapes (synthetic)" in page
    # the Markdown opens the same way
    assert markdown.index("## Key results") < markdown.index("| defense |")
    assert "**Data: SYNTHETIC: " in markdown and "(synthetic data)" in markdown.splitlines()[0]
    assert "- Undefended pspnet leaks AUC 0.968 [0.938, 0.998]" in markdown


def test_score_tables_have_one_row_per_defense(sections: list) -> None:
    scores = sections[0]
    assert scores.heading.startswith("dependent: ")
    assert [(r[0].lines[0], r[1].lines[0]) for r in scores.rows] == [
        (defense_label(d, p), arch) for d, p in DEFENSES for arch in ARCHS]
    assert len(scores.header) == 10
    upernet_argmax = next(r for r in scores.rows if r[0].lines == ["argmax"] and r[1].lines == ["upernet"])
    assert upernet_argmax[2].lines == ["failed"] and upernet_argmax[2].state == "failed"
    assert "RuntimeError: argmax broke" in upernet_argmax[2].title
    none = scores.rows[0]
    assert none[2].lines == [EVIL] and none[3].auc == pytest.approx(0.9675)
    assert none[6].lines == ["overlap 0.5"] and none[7].lines == ["0: 0.952 · 0.5: 0.968"]


def test_auc_cells_are_shaded_by_a_colormap_and_stay_legible(page: str) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cells = [c for c in _parsed(page).cells if "data-v" in c]
    assert len(cells) > 40
    for cell in cells:
        assert f"background:{leak_colour(float(cell['data-v']))}" in cell["style"]
    assert leak_colour(0.5) == leak_colour(0.3) == to_hex(colormaps[LEAK_CMAP](0.0))

    def lum(hex_: str) -> float:
        channels = [int(hex_[k:k + 2], 16) / 255 for k in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    shades = [lum(leak_colour(a / 100)) for a in range(50, 101)]
    assert all(a >= b for a, b in zip(shades, shades[1:])) and shades[0] > shades[-1] + 0.4  # darker as AUC grows
    assert min((s + 0.05) / 0.05 for s in shades) >= 4.5  # black text: WCAG contrast on every shade
    red = tuple(int(leak_colour(0.95)[k:k + 2], 16) for k in (1, 3, 5))
    assert red[0] > red[1] + 80 and red[0] > red[2] + 80
    classes = {c["class"] for c in _parsed(page).cells}
    assert {"pass", "fail", "failed"} <= classes


def test_page_comes_from_templates_with_autoescaping(page: str) -> None:
    assert _environment().autoescape is True
    css = (TEMPLATES / "leaderboard.css").read_text()
    assert css in page and (TEMPLATES / "leaderboard.js").read_text() in page
    assert _parsed(page).scripts == [{}], "one inline script, no src"


def test_no_external_asset(page: str) -> None:
    assert "http" not in page.lower()
    assert not re.search(r"<[^>]*\s(src|href)\s*=", page, flags=re.I), "an attribute that loads something"
    assert "@import" not in page and "url(" not in page


def test_names_are_escaped_in_the_page_and_in_the_markdown(page: str, markdown: str) -> None:
    escaped = "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;&amp;&#34;"
    for text in (page, markdown):
        assert "<img" not in text and "<script>alert" not in text and 'onerror="' not in text
    assert f"<title>segleak leaderboard: segleak-test {escaped} (synthetic data)</title>" in page
    assert f"independent: victim cityscapes (synthetic), shadow {escaped} (synthetic)" in page
    assert f"# segleak leaderboard: segleak-test {escaped} (synthetic data)" in markdown
    assert f"## independent: victim cityscapes (synthetic), shadow {escaped} (synthetic)" in markdown
    assert f"| gaussian σ=0.5 | pspnet | {escaped} |" in markdown  # a cell: escaped, and no | breaks the row
    rows = [line for line in markdown.splitlines() if line.startswith("| gaussian σ=0.5 | pspnet |")]
    assert rows and all(line.count(" | ") == 10 for line in rows)


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian's chromium package)")
def test_chromium_first_screen_shows_the_key_results_and_tables_fit_1280(page: str, tmp_path: Path) -> None:
    probe = ("<script>var box=document.querySelector('.keyresults').getBoundingClientRect();"
             "var widths=Array.prototype.map.call(document.querySelectorAll('.wrap'),function(w){"
             "return w.scrollWidth - w.clientWidth;});"
             "document.body.setAttribute('data-key-bottom',Math.round(box.bottom));"
             "document.body.setAttribute('data-overflow',Math.max.apply(null,widths));"
             "document.body.setAttribute('data-width',document.documentElement.scrollWidth);</script></body>")
    html_file = tmp_path / "probe.html"
    html_file.write_text(page.replace("</body>", probe), encoding="utf-8")
    dom = _chromium("--window-size=1280,900", "--dump-dom", html_file.as_uri(), tmp=tmp_path).stdout
    assert int(re.search(r'data-key-bottom="(\d+)"', dom)[1]) <= 900, "the key results are not on the first screen"
    assert int(re.search(r'data-overflow="(-?\d+)"', dom)[1]) <= 0, "a table scrolls sideways at 1280 px"
    assert int(re.search(r'data-width="(\d+)"', dom)[1]) <= 1280, "the page scrolls sideways at 1280 px"
    png = tmp_path / "lb.png"
    _chromium("--window-size=1280,900", f"--screenshot={png}", html_file.as_uri(), tmp=tmp_path)
    from PIL import Image

    with Image.open(png) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50, "blank screenshot"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian's chromium package)")
@pytest.mark.parametrize("words, expected", [
    ("gaussian", {"gaussian σ=0.1", "gaussian σ=0.5"}),  # a defense: its rows, not an empty table
    ("mixup upernet", {"mixup alpha=0.4"}),
    ("loss_threshold", None),  # an attack: the rows where it ran (strongest or in the hover text)
])
def test_chromium_filter_matches_defenses_and_attacks(page: str, tmp_path: Path, words: str, expected) -> None:
    driven = page.replace("</body>", "<script>document.querySelectorAll('thead th')[3].click();"
                          f"var box=document.getElementById('filter');box.value={json.dumps(words)};"
                          "box.dispatchEvent(new Event('input'));</script></body>")
    html_file = tmp_path / "driven.html"
    html_file.write_text(driven, encoding="utf-8")
    dom = _chromium("--window-size=1280,900", "--dump-dom", html_file.as_uri(), tmp=tmp_path).stdout
    first_table = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr( hidden=\"\")?>(.*?)</tr>", first_table, flags=re.S)
    assert len(rows) == len(DEFENSES) * len(ARCHS)
    shown = {re.search(r"<td[^>]*>(.*?)</td>", body)[1] for hidden, body in rows if not hidden}
    if expected is None:
        assert len(shown) == len(DEFENSES)  # both attacks ran against every defense
    else:
        assert shown == expected
    aucs = [float(v) for v in re.findall(r'data-v="([\d.]+)"', first_table)]
    assert aucs == sorted(aucs, reverse=True), "clicking the AUC header sorts high to low"


def test_null_check_tally_fails_on_a_failing_placebo_or_a_flagged_blind_baseline(table: pd.DataFrame) -> None:
    from analysis.headline import null_tally

    passing = table[~((table["control"] != "none") & (table["attack_label"] == "loss_threshold"))]
    assert null_tally(passing, pd.DataFrame()).text() == "Null checks: all pass (placebo 1/1 pass; no blind baseline)."
    flagged = pd.DataFrame({"flagged": [False, True]})
    assert not null_tally(passing, flagged).passed
    assert "blind baseline flagged in 1/2" in null_tally(passing, flagged).text()
    assert null_tally(table, pd.DataFrame({"flagged": [False]})).text().startswith("Null checks: CHECK FAILED (placebo 1/2")
