"""The HTML leaderboard page: leakage colours, a header that stays in view, sorting and filtering with an inline
script, wide tables scrolling inside their section, no external asset, escaped labels; and, where Chromium is
installed, the page as a browser renders and runs it."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from analysis.leaderboard import _leak_colours, to_html
from analysis.table import MISSING, Cell, Section

CHROMIUM = Path("/usr/bin/chromium")
DEFENSES = ["none", "argmax", "gaussian σ=0.1", "gaussian σ=0.5", "temperature t=2", "topk k=1", "dp_sgd noise_multiplier=1",
            "label_smoothing eps=0.1", "mixup alpha=0.4", "weight_decay value=0.05", "early_stopping fraction=0.5"]
EVIL = '<img src=x onerror="alert(1)">&"'


def _score(auc: float, attack: str = "patch/slm") -> Cell:
    return Cell([f"AUC {auc:.3f} ± 0.010 [{auc - 0.03:.3f}, {min(auc + 0.03, 1):.3f}]", "TPR@1%FPR 0.120", "mIoU 0.600"],
                strong=attack, title="loss_threshold: AUC 0.612")


def _sections() -> list[Section]:
    """A wide score table (11 defenses), its placebo controls and the victims table, with hostile labels."""
    scores = Section("dependent: victim cityscapes, shadow cityscapes", ["victim arch", "shadow overlap", *DEFENSES, EVIL])
    for r, (arch, overlap) in enumerate([(a, o) for a in ("pspnet", "upernet", "segformer") for o in ("0", "0.5", "1")]):
        row = [Cell([arch]), Cell([overlap])]
        for j in range(len(DEFENSES) + 1):
            if (r, j) == (4, 1):
                row.append(Cell(["failed"], state="failed", title="RuntimeError: argmax broke (seed 0)"))
            elif (r, j) == (8, 3):
                row.append(Cell([MISSING], state="missing", title="not in this grid"))
            else:
                row.append(_score(round(0.5 + ((r * 7 + j * 3) % 10) / 20, 3), attack=EVIL if (r, j) == (0, 0) else "patch/slm"))
        scores.rows.append(row)
    placebo = Section("placebo controls (dependent): a victim that never saw the members must give an AUC interval "
                      "containing 0.5", ["victim arch", "shadow overlap", "shadow arch", "defense", "attack", "AUC", "null check"])
    placebo.rows.append([Cell(["pspnet"]), Cell(["0"]), Cell(["pspnet"]), Cell(["none"]), Cell(["patch/slm"]),
                         Cell(["AUC 0.510 [0.450, 0.570]"]), Cell(["✓ pass"], state="pass")])
    placebo.rows.append([Cell(["pspnet"]), Cell(["0"]), Cell(["pspnet"]), Cell(["none"]), Cell(["loss_threshold"]),
                         Cell(["AUC 0.580 [0.550, 0.610]"]), Cell(["✗ FAIL"], state="fail")])
    victims = Section("victim models: training vs held-out mIoU", ["dataset", "arch", "seed", "mIoU train", "DP ε"])
    victims.rows.append([Cell(["cityscapes"]), Cell([EVIL]), Cell(["0"]), Cell(["0.800"]), Cell([MISSING], state="missing")])
    return [scores, placebo, victims]


@pytest.fixture(scope="module")
def page() -> str:
    return to_html(_sections(), SimpleNamespace(experiment=f"segleak-test {EVIL}", parent_run_id="abc123"))


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


def _background(cell: dict[str, str]) -> str:
    found = re.search(r"background:(#[0-9a-f]{6})", cell.get("style", ""))
    return found[1] if found else ""


def test_header_stays_in_view_and_wide_tables_scroll_inside_their_section(page: str) -> None:
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert re.search(r"thead th\{[^}]*position:sticky;top:0", css)
    assert re.search(r"\.wrap\{[^}]*overflow:auto", css) and re.search(r"\.wrap\{[^}]*max-width:100%", css)
    assert page.count('<div class="wrap"><table>') == page.count("<table>") == 3  # every table in its own scroller
    assert ".key{position:sticky;left:0" in css  # row keys stay in view while a table scrolls sideways


def test_sort_and_filter_script_is_inline(page: str) -> None:
    parsed = _parsed(page)
    assert parsed.scripts == [{}], "one inline script, no src"
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    assert "addEventListener('click'" in script and "function sortBy" in script and "aria-sort" in script
    assert '<input id="filter" type="search"' in page and "addEventListener('input'" in script
    assert "tr.hidden" in script


def test_auc_cells_are_coloured_by_leakage(page: str) -> None:
    cells = [c for c in _parsed(page).cells if "data-v" in c]
    by_auc = {float(c["data-v"]): _background(c) for c in cells}
    assert by_auc[0.5] == "#ffffff"                    # chance: neutral
    assert by_auc[0.95] not in ("", by_auc[0.5])       # strong leakage: coloured
    red = tuple(int(by_auc[0.95][k:k + 2], 16) for k in (1, 3, 5))
    assert red[0] > red[1] + 80 and red[0] > red[2] + 80, by_auc[0.95]
    # darker as the AUC grows, and the text stays legible (WCAG contrast >= 4.5) on every shade
    def lum(hex_: str) -> float:
        channels = [int(hex_[k:k + 2], 16) / 255 for k in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    shades = [_leak_colours(a / 100) for a in range(40, 101)]
    lums = [lum(bg) for bg, _ in shades]
    assert all(a >= b for a, b in zip(lums, lums[1:])) and lums[0] == lums[10] == 1.0  # below 0.5: neutral too
    for bg, fg in shades:
        fg_hex = {"#000": "#000000", "#fff": "#ffffff"}[fg]
        high, low = sorted((lum(bg), lum(fg_hex)), reverse=True)
        assert (high + 0.05) / (low + 0.05) >= 4.5, (bg, fg)
    # placebo verdicts keep their green/red classes; failed and missing cells are not on the leakage scale
    classes = {c["class"] for c in _parsed(page).cells}
    assert {"pass", "fail", "failed", "missing"} <= classes
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert re.search(r"td\.pass[^{]*\{[^}]*background:#d9f2d9", css) and re.search(r"td\.fail[^{]*\{[^}]*background:#ffd6d6", css)
    placebo_auc = next(c for c in _parsed(page).cells if c["text"].startswith("AUC 0.580 [0.550"))
    assert placebo_auc["data-v"] == "0.580" and _background(placebo_auc) != "#ffffff"


def test_failed_cells_keep_their_markup(page: str) -> None:
    assert '<td class="failed" title="RuntimeError: argmax broke (seed 0)">failed</td>' in page
    assert '<td class="missing" title="not in this grid">—</td>' in page


def test_no_external_asset(page: str) -> None:
    assert "http" not in page.lower()
    assert not re.search(r"<[^>]*\s(src|href)\s*=", page, flags=re.I), "an attribute that loads something"
    assert "@import" not in page and "url(" not in page


def test_labels_are_escaped(page: str) -> None:
    assert "<img" not in page and 'onerror="' not in page
    escaped = "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&quot;"
    assert f"<th scope=\"col\">{escaped}</th>" in page                # a column header
    assert f"<b>{escaped}</b>" in page                                # a cell's lead
    assert f"<td class=\"ok\">{escaped}</td>" in page                 # a plain cell
    assert f"<title>segleak leaderboard: segleak-test {escaped}</title>" in page


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_chromium_renders_the_page(page: str, tmp_path: Path) -> None:
    from PIL import Image

    html_file = tmp_path / "leaderboard.html"
    html_file.write_text(page, encoding="utf-8")
    png = tmp_path / "lb.png"
    done = _chromium("--window-size=1600,1000", f"--screenshot={png}", html_file.as_uri(), tmp=tmp_path)
    assert png.exists() and png.stat().st_size > 10_000, done.stderr[-2000:]
    with Image.open(png) as shot:
        assert shot.size == (1600, 1000)
        rgb = shot.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50, "blank screenshot"
        reds = sum(n for n, (r, g, b) in colours if r > 180 and g < 120 and b < 120)
        assert reds > 5_000, "no leakage-coloured cell on screen"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_chromium_runs_the_sort_and_filter(page: str, tmp_path: Path) -> None:
    """Click the `none` header (AUC, so high to low first) and type `upernet` into the filter; read the DOM back."""
    driven = page.replace("</body>", "<script>document.querySelectorAll('thead th')[2].click();"
                          "var box=document.getElementById('filter');box.value='upernet';"
                          "box.dispatchEvent(new Event('input'));"
                          "document.body.setAttribute('data-width',document.documentElement.scrollWidth);</script></body>")
    html_file = tmp_path / "driven.html"
    html_file.write_text(driven, encoding="utf-8")
    done = _chromium("--window-size=1600,1000", "--dump-dom", html_file.as_uri(), tmp=tmp_path)
    dom = done.stdout
    assert "<tbody>" in dom, done.stderr[-2000:]
    assert int(re.search(r'data-width="(\d+)"', dom)[1]) <= 1600, "the page itself scrolls sideways"
    first_table = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr( hidden=\"\")?>(.*?)</tr>", first_table, flags=re.S)
    assert len(rows) == 9
    aucs = [float(re.search(r'data-v="([\d.]+)"', body)[1]) for _, body in rows[:]]  # column 'none' of each row
    shown = [(hidden, body) for hidden, body in rows if not hidden]
    assert len(shown) == 3 and all(">upernet<" in body for _, body in shown)
    assert aucs == sorted(aucs, reverse=True), aucs
    assert 'aria-sort="descending"' in dom and "3 of 12 rows" in dom
