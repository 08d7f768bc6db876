"""Figures: skipped rather than drawn empty or as one point; the overlap heatmap compares the same attacks at
every overlap; one colour per defense and one line style per attack in every figure; log-log ROC with equal
decades and the low-FPR rates marked and read off; the paper style (column widths, editable SVG text, PDF).
Built from the aggregated grid of tests/test_leaderboard_html.py (no MLflow)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

from analysis.aggregate import aggregate, comparable, worst_case
from analysis.figures import DPI, new_figure, save
from analysis.matched_plots import plot_matched_frontier
from analysis.plots import _trend, overlap_cells, plot_frontier
from analysis.roc import LOW_FPRS, _floor, _panel, _tpr_at
from analysis.style import ONE_COLUMN_IN, TWO_COLUMN_IN, figure_style, palette, table_palette
from benchmark.metrics.membership import roc_curve
from benchmark.registry import DEFENSES
from test_leaderboard_html import _cells, _run

GAUSSIAN_TREND = DEFENSES.lookup("gaussian").trend

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """Four defenses of the grid (figures take seconds each on 2 cores)."""
    cells = _cells()
    return aggregate(cells[cells["defense"].isin(["none", "argmax", "gaussian", "dp_sgd"])])


def _svg_text(path: Path) -> str:
    return path.with_suffix(".svg").read_text()


def test_one_point_and_empty_figures_are_skipped(table: pd.DataFrame, tmp_path: Path, caplog) -> None:
    worst = worst_case(comparable(table))
    one_sigma = worst[~worst["defense_label"].eq("gaussian σ=0.5")]
    assert _trend(one_sigma, tmp_path, "gaussian", GAUSSIAN_TREND) == []
    assert "a single gaussian parameter value (0.1): one point is no trend" in caplog.text
    assert len(_trend(worst, tmp_path, "gaussian", GAUSSIAN_TREND)) == 3
    # a setting whose cells have no mIoU (the LiRA protocol pools references) gets no empty frontier
    protocol = worst[worst["setting"] == "dependent"].assign(setting="lira_protocol", victim_miou_mean=math.nan)
    drawn = plot_frontier(pd.concat([worst, protocol]), tmp_path / "f")
    assert "frontier_dependent_cityscapes_cityscapes" in {p.stem for p in drawn}
    assert not list((tmp_path / "f").glob("frontier_lira_protocol*"))
    assert "skipped privacy-utility frontier, lira_protocol" in caplog.text
    assert plot_matched_frontier(protocol, tmp_path / "m") == [] and not (tmp_path / "m").exists()
    assert "fewer than two points with a victim mIoU" in caplog.text


def test_overlap_heatmap_compares_the_same_attacks_at_every_overlap() -> None:
    """LiRA (stronger) ran at overlap 0 only: the heatmap must not show it there beside patch at 0.5."""
    rows = [_run(i, victim_arch="pspnet", shadow_arch="pspnet", shadow_overlap=overlap, defense="none",
                 defense_params="{}", attack=attack, representation="slm", attack_label=attack, auc=auc)
            for i, (overlap, attack, auc) in enumerate([(0.0, "patch", 0.70), (0.0, "lira", 0.90), (0.5, "patch", 0.75)])]
    frame = pd.DataFrame(rows).assign(defense_label="none", defense_key=[(0, "none", ())] * 3)
    from analysis.schema import CELL_METRICS

    for name in CELL_METRICS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce") if name in frame else math.nan
    same, best = overlap_cells(aggregate(frame))
    assert set(same["attack_label"]) == {"patch"}
    assert dict(zip(best["shadow_overlap"], best["auc_mean"])) == {0.0: pytest.approx(0.70), 0.5: pytest.approx(0.75)}


def test_one_colour_per_defense_and_style_per_attack_everywhere(table: pd.DataFrame, tmp_path: Path) -> None:
    full = table_palette(table)
    # the colours follow the registries, not the data: a table with fewer defenses keeps gaussian's colour
    few = table_palette(table[table["defense"].isin(["none", "gaussian"])])
    assert few.family("gaussian") == full.family("gaussian") and few.attacks == full.attacks
    shades = [full.defense("gaussian σ=0.1"), full.defense("gaussian σ=0.5")]
    assert len(set(shades)) == 2 and full.family("gaussian") not in (full.family("dp_sgd"), full.family("none"))
    # one colour per attack, one line style per representation of it (patch/slm is also named EVIL here)
    assert len({s.color for s in full.attacks.values()}) == table["attack"].nunique() == 2
    assert len({(s.color, s.ls) for s in full.attacks.values()}) == len(full.attacks) == 3
    again = palette(zip(table["defense"], table["defense_label"], table["defense_rank"]),
                    zip(table["attack"], table["attack_label"]))
    assert again == full
    worst = worst_case(comparable(table))
    worst = worst[worst["setting"] == "dependent"]
    frontier = plot_frontier(worst, tmp_path, full)
    trend = _trend(worst, tmp_path, "gaussian", GAUSSIAN_TREND, full)
    assert to_hex(full.defense("gaussian σ=0.1")) in _svg_text(frontier[0])
    assert to_hex(full.family("gaussian")) in _svg_text(trend[0])


def _scores(n_members: int, n_nonmembers: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1, n_members), rng.normal(0, 1, n_nonmembers)])
    return scores, np.r_[np.ones(n_members, bool), np.zeros(n_nonmembers, bool)]


def test_roc_panel_has_equal_decades_and_reads_tpr_at_low_fpr() -> None:
    assert _floor(200, 200) == pytest.approx(1e-3) and _floor(2000, 5000) == pytest.approx(1e-4)
    scores, member = _scores(300, 2000, 1.5)
    fpr, tpr, _ = roc_curve(scores, member)
    assert _tpr_at(fpr, tpr, 0.001, 200) == "—"  # 200 non-members cannot resolve 0.1%
    assert float(_tpr_at(fpr, tpr, 0.01, 2000)) == pytest.approx(tpr[fpr <= 0.01].max(), abs=5e-4)
    fig = Figure()
    ax = fig.subplots()
    _panel(ax, [("patch/slm", fpr, tpr)], {"patch/slm": {"color": "tab:green", "ls": "--"}}, _floor(300, 2000), 2000, "t")
    assert ax.get_xlim() == pytest.approx(ax.get_ylim()) and ax.get_aspect() == 1.0
    assert ax.get_xscale() == ax.get_yscale() == "log"
    marked = {line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"}
    assert marked == set(LOW_FPRS)
    texts = [t.get_text() for t in ax.texts]
    assert "TPR at 1% / 0.1% FPR" in texts
    assert f"patch/slm: {_tpr_at(fpr, tpr, 0.01, 2000)} / {_tpr_at(fpr, tpr, 0.001, 2000)}" in texts
    assert ax.get_legend() is None  # the figure's legend sits outside the panels


def test_paper_style_has_column_widths_editable_svg_text_and_pdf(tmp_path: Path) -> None:
    with figure_style("paper"):
        narrow, wide = new_figure(5.0, 4.0), new_figure(12.0, 6.0)
        for fig, stem in ((narrow, "narrow"), (wide, "wide")):
            fig.subplots().set_title(f"a title {stem}")
            paths = save(fig, tmp_path, stem)
    assert narrow.get_size_inches() == pytest.approx((ONE_COLUMN_IN, 4.0 * ONE_COLUMN_IN / 5.0))
    assert wide.get_size_inches() == pytest.approx((TWO_COLUMN_IN, 6.0 * TWO_COLUMN_IN / 12.0))
    assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"]
    with Image.open(tmp_path / "wide.png") as image:
        assert image.width == round(TWO_COLUMN_IN * DPI)
    texts = [t for t in ET.parse(tmp_path / "wide.svg").getroot().iter(f"{SVG}text")]
    assert any("a title wide" in "".join(t.itertext()) for t in texts), "SVG text drawn as paths"
    assert (tmp_path / "wide.pdf").read_bytes().startswith(b"%PDF")
    assert new_figure(12.0, 6.0).get_size_inches() == pytest.approx((12.0, 6.0))  # screen again outside


def test_unknown_style_is_one_clear_error() -> None:
    from benchmark.errors import SegleakError

    with pytest.raises(SegleakError, match="--style: expected one of screen, paper, got 'poster'"):
        with figure_style("poster"):
            pass
