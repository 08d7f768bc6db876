"""The report's audit table and plot, from a frame shaped like `analysis.runs.load_runs(...).audits`."""

from __future__ import annotations

import math

import pandas as pd

from analysis.audit import audit_sections, plot_audit
from analysis.leaderboard import to_html, to_markdown
from analysis.runs import GridRuns


def _row(label: str, control: str, eps: float, accountant: float = math.nan, status: str = "FINISHED") -> dict:
    base = {"status": status, "dataset": "cityscapes", "arch": "pspnet_tiny", "setting": "independent", "seed": "0",
            "defense": label.split("(")[0], "defense_params": "{}", "defense_label": label, "control": control,
            "score": "calibrated_loss", "kinds": "natural,permuted", "confidence": 0.95, "delta": 1e-5,
            "dp_epsilon": accountant, "miou_heldout": 0.2, "error": None}
    for prefix, scale in (("", 1.0), ("natural_", 0.8), ("permuted_", 1.1)):
        base.update({f"{prefix}eps_lower": eps * scale, f"{prefix}k": 16, f"{prefix}guesses": 32,
                     f"{prefix}correct": 30, f"{prefix}m": 96 if not prefix else 48, f"{prefix}ceiling": 2.8,
                     f"{prefix}n_tests": 14})
    base["constant_eps_lower"] = math.nan
    return base


AUDITS = pd.DataFrame([
    _row("none", "none", 1.63), _row("dp_sgd(target_epsilon=2)", "none", 0.0, 2.0),
    _row("dp_sgd(target_epsilon=8)", "none", 0.3, 8.0), _row("none", "placebo", 0.0),
])


def _checks(section) -> dict[tuple[str, str], str]:
    return {(row[2].lines[0], row[3].lines[0]): row[-1].lines[0] for row in section.rows}


def test_the_table_checks_dp_bounds_against_the_accountant_and_the_placebo_against_zero():
    (section,) = audit_sections(AUDITS)
    assert [h for h in section.header if "canaries" in h] == ["ε lower bound, all canaries", "natural canaries",
                                                              "permuted canaries"]  # constant: not audited
    checks = _checks(section)
    assert checks[("dp_sgd(target_epsilon=2)", "none")] == "✓ ≤ accountant"
    assert checks[("none", "placebo")] == "✓ pass"
    # DP rows in accountant order, undefended (no accountant) after them, the placebo last
    assert [r[2].lines[0] for r in section.rows] == ["dp_sgd(target_epsilon=2)", "dp_sgd(target_epsilon=8)", "none",
                                                     "none"]
    broken = pd.DataFrame([_row("dp_sgd(target_epsilon=2)", "none", 2.5, 2.0), _row("none", "placebo", 0.4)])
    assert set(_checks(audit_sections(broken)[0]).values()) == {"✗ ABOVE ACCOUNTANT", "✗ FAIL"}
    assert audit_sections(pd.DataFrame()) == []


def test_the_table_renders_in_both_formats():
    runs = GridRuns("sqlite:///x.db", "exp", "run", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), AUDITS)
    sections = audit_sections(AUDITS)
    markdown, page = to_markdown(sections, runs), to_html(sections, runs)
    assert "ε ≥ 1.63" in markdown and "30/32 right (k = 16), m = 96" in markdown and "∞ (no DP)" in markdown
    assert "ε ≥ 1.63" in page and "Steinke" in page


def test_the_plot_is_written(tmp_path):
    paths = plot_audit(AUDITS, tmp_path)
    assert [p.name for p in paths] == ["audit_epsilon.png", "audit_epsilon.svg", "audit_epsilon.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert plot_audit(pd.DataFrame(), tmp_path) == []
