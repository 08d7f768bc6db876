"""Leaderboard, plots and the parent-run report, built from a small synthetic grid logged like the runner logs.

The store is written once per module (sequentially, one SQLite database) because creating MLflow tables
costs seconds on the project's 2-core machines.
"""

from __future__ import annotations

import html
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist, mean

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from markupsafe import escape
from PIL import Image

from analysis.leaderboard import write_leaderboard
from analysis.report import question, write_report
from benchmark.errors import SegleakError

EXPERIMENT = "segleak-test"
# defense, params, base AUC, victim mIoU, dp epsilon
DEFENSES = (
    ("none", {}, 0.80, 0.60, None),
    ("argmax", {}, 0.74, 0.60, None),
    ("gaussian", {"sigma": 0.1}, 0.70, 0.59, None),
    ("gaussian", {"sigma": 0.5}, 0.60, 0.52, None),
    ("dp_sgd", {"noise_multiplier": 0.5}, 0.62, 0.45, 8.0),
    ("dp_sgd", {"noise_multiplier": 1.0}, 0.55, 0.38, 2.0),
)
ATTACKS = (("patch", "slm", 0.05), ("loss_threshold", "statistic", 0.0))
SEEDS = (0, 1)
MISSING_TPR = "needs >= 100 non-members to resolve 1% FPR, have 50"


@dataclass
class Store:
    uri: str
    parent_id: str
    logged: list[dict]  # one dict per cell run: params, metrics, status


def _auc(dataset: str, shadow: str, arch: str, overlap: float, base: float, bonus: float, seed: int) -> float:
    return round(base + bonus + 0.01 * seed + 0.04 * overlap - 0.03 * (arch == "deeplabv3") - 0.1 * (shadow != dataset), 6)


def _scores(path: Path, auc: float, n_members: int, n_nonmembers: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    shift = math.sqrt(2) * NormalDist().inv_cdf(auc)
    frame = pd.DataFrame({
        "image_id": [f"img{i:04d}" for i in range(n_members + n_nonmembers)],
        "is_member": [1] * n_members + [0] * n_nonmembers,
        "score": np.concatenate([rng.normal(shift, 1, n_members), rng.normal(0, 1, n_nonmembers)]),
    })
    frame.to_csv(path, index=False)
    return path


def _log_cell(client: MlflowClient, exp: str, parent: str, tmp: Path, cell: dict, logged: list[dict]) -> None:
    params = {k: str(v) for k, v in cell["params"].items()}
    tags = {"segleak.kind": "attack", "mlflow.parentRunId": parent,
            "segleak.setting": "dependent" if params["dataset"] == params["shadow_dataset"] else "independent"}
    tags.update(cell.get("tags", {}))
    run = client.create_run(exp, tags=tags)
    rid = run.info.run_id
    metrics = cell.get("metrics", {})
    client.log_batch(rid, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in params.items()])
    if cell["status"] == "FINISHED":
        client.log_artifact(rid, str(_scores(tmp / "scores.csv", metrics["auc"], int(metrics["n_members"]),
                                             int(metrics["n_nonmembers"]), int(params["seed"]))))
    client.set_terminated(rid, cell["status"])
    logged.append({**cell, "params": params, "run_id": rid})


def _grid_cells() -> list[dict]:
    """Dependent: pspnet x overlaps {0, 0.5}, deeplabv3 x {0} (undefended); independent: pspnet vs bdd100k."""
    rows = [("cityscapes", "cityscapes", "pspnet", o, d) for o in (0.0, 0.5) for d in DEFENSES]
    rows += [("cityscapes", "cityscapes", "deeplabv3", 0.0, DEFENSES[0])]
    rows += [("cityscapes", "bdd100k", "pspnet", 0.0, d) for d in DEFENSES if d[0] in ("none", "gaussian")]
    cells = []
    for dataset, shadow, arch, overlap, (defense, dparams, base, miou, eps) in rows:
        for attack, rep, bonus in ATTACKS:
            for seed in SEEDS:
                params = {"dataset": dataset, "victim_arch": arch, "shadow_dataset": shadow, "shadow_arch": arch,
                          "shadow_overlap": overlap, "defense": defense, "defense_params": json.dumps(dparams),
                          "attack": attack, "representation": rep, "seed": seed, "control": "none"}
                failed = (defense == "argmax" and overlap == 0.5) or (
                    defense == "dp_sgd" and dparams["noise_multiplier"] == 1.0 and attack == "loss_threshold" and seed == 1)
                if failed:
                    cells.append({"params": params, "status": "FAILED",
                                  "tags": {"segleak.error": f"RuntimeError: {defense} broke (seed {seed})"}})
                    continue
                if attack == "loss_threshold" and dparams.get("sigma") == 0.5:
                    bonus = 0.08  # noise hurts the patch CNN more than the loss statistic
                auc = _auc(dataset, shadow, arch, overlap, base, bonus, seed)
                # the attacker's own calibration AUC ranks attacks as the victim AUC does, except in the
                # independent undefended cells, where it prefers the loss statistic: the table must follow it
                calibration = auc - 0.02 + (0.2 * (attack == "loss_threshold") if shadow != dataset and defense == "none" else 0)
                metrics = {"auc": auc, "auc_ci_low": auc - 0.04, "auc_ci_high": auc + 0.04, "calibration_auc": calibration,
                           "tpr_at_1pct_fpr": round((auc - 0.5) * 0.5, 6), "balanced_accuracy": auc - 0.05,
                           "precision": 0.7, "recall": 0.6, "victim_miou": miou + 0.01 * seed,
                           "n_members": 200.0, "n_nonmembers": 200.0}
                tags = {"segleak.missing.tpr_at_0.1pct_fpr": "needs >= 1000 non-members, have 200"}
                if eps is not None:
                    metrics["dp_epsilon"] = eps + 0.1 * seed
                if shadow != dataset and dparams.get("sigma") == 0.1:
                    del metrics["tpr_at_1pct_fpr"]
                    metrics["n_nonmembers"] = 50.0
                    tags["segleak.missing.tpr_at_1pct_fpr"] = MISSING_TPR
                cells.append({"params": params, "status": "FINISHED", "metrics": metrics, "tags": tags})
    for attack, rep, auc, low, high in (("patch", "slm", 0.51, 0.45, 0.57), ("loss_threshold", "statistic", 0.58, 0.55, 0.61)):
        params = {"dataset": "cityscapes", "victim_arch": "pspnet", "shadow_dataset": "cityscapes",
                  "shadow_arch": "pspnet", "shadow_overlap": 0.0, "defense": "none", "defense_params": "{}",
                  "attack": attack, "representation": rep, "seed": 0, "control": "placebo"}
        cells.append({"params": params, "status": "FINISHED", "metrics": {
            "auc": auc, "auc_ci_low": low, "auc_ci_high": high, "tpr_at_1pct_fpr": 0.01, "victim_miou": 0.6,
            "n_members": 200.0, "n_nonmembers": 200.0, "calibration_auc": 0.5}})
    return cells


def _log_models(client: MlflowClient, exp: str, parent: str) -> None:
    """Victims: one per arch and training-side defense (output-side defenses reuse the undefended one)."""
    for arch in ("pspnet", "deeplabv3"):
        for defense, _, _, miou, eps in (d for d in DEFENSES if d[0] in ("none", "dp_sgd")):
            run = client.create_run(exp, tags={"segleak.kind": "model", "mlflow.parentRunId": parent,
                                               "segleak.setting": "dependent", "segleak.placebo": "false"})
            metrics = [Metric("miou_train", miou + 0.2, 0, 0), Metric("miou_heldout", miou, 0, 0)]
            if eps is not None:
                metrics.append(Metric("dp_epsilon", eps, 0, 0))
            params = {"dataset": "cityscapes", "arch": arch, "role": "victim", "train_defense": defense,
                      "overlap": "0.0", "seed": "0", "n_train": "200"}
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
            client.set_terminated(run.info.run_id)


def _log_blind(client: MlflowClient, exp: str, parent: str) -> None:
    """The blind baselines: the dependent setting shows no shift, the independent one is flagged."""
    for shadow, auc, p, flagged in (("cityscapes", 0.52, 0.41, "false"), ("bdd100k", 0.71, 0.01, "true")):
        setting = "dependent" if shadow == "cityscapes" else "independent"
        run = client.create_run(exp, tags={"segleak.kind": "blind", "mlflow.parentRunId": parent,
                                           "segleak.setting": setting, "segleak.flagged": flagged})
        metrics = {"blind_auc": 0.5, "blind_auc_ci_low": 0.4, "blind_auc_ci_high": 0.6, "shift_auc": auc,
                   "shift_null_low": 0.35, "shift_null_high": 0.6, "shift_p_value": p, "n_groups": 400.0}
        params = {"dataset": "cityscapes", "shadow_dataset": shadow, "setting": setting, "seed": "0", "overlap": "0.0"}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id)


def _invocation(client: MlflowClient, exp: str) -> str:
    run = client.create_run(exp, tags={"segleak.kind": "invocation"})
    client.log_batch(run.info.run_id, params=[Param("profile", "test"), Param("grid_name", exp), Param(
        "data_sources", json.dumps({"cityscapes": "synthetic", "bdd100k": "synthetic"}))])
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
    old = _invocation(client, exp)  # an earlier invocation whose cell must not show up
    stale = _grid_cells()[0]
    stale["metrics"] = {**stale["metrics"], "auc": 0.999}
    _log_cell(client, exp, old, tmp, stale, [])
    client.set_terminated(old)
    parent = _invocation(client, exp)
    _log_models(client, exp, parent)
    _log_blind(client, exp, parent)
    logged: list[dict] = []
    for cell in _grid_cells():
        _log_cell(client, exp, parent, tmp, cell, logged)
    client.set_terminated(parent)
    client.create_experiment("unrelated")  # newer, but without a segleak invocation
    return Store(uri, parent, logged)


def _expected(store: Store, **match: object) -> list[dict]:
    return [c for c in store.logged if all(c["params"][k] == str(v) for k, v in match.items())]


def _mean(cells: list[dict], metric: str) -> float:
    return mean(c["metrics"][metric] for c in cells if c["status"] == "FINISHED")


@pytest.fixture(scope="module")
def board(store: Store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    paths = write_leaderboard(store.uri, None, tmp_path_factory.mktemp("board"))
    by_suffix = {p.suffix: p for p in paths}
    return {"csv": pd.read_csv(by_suffix[".csv"]), "md": by_suffix[".md"].read_text(),
            "html": by_suffix[".html"].read_text(), "key_results": by_suffix[".txt"].read_text(), "paths": paths}


def _md_cell(md: str, section: str, row_start: str, column: str) -> str:
    """The text of one Markdown table cell, found by section heading, row prefix and column header."""
    block = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split(" | ")]
    for line in lines[2:]:
        if line.startswith(row_start):
            return [c.strip() for c in line.strip().strip("|").split(" | ")][header.index(column)]
    raise AssertionError(f"no row {row_start!r} in {section!r}")


DEPENDENT = "dependent: victim cityscapes (synthetic), shadow cityscapes (synthetic)"
INDEPENDENT = "independent: victim cityscapes (synthetic), shadow bdd100k (synthetic)"


def test_leaderboard_csv_is_tidy_and_averages_seeds(store: Store, board: dict) -> None:
    csv = board["csv"]
    assert len(csv) == len({(tuple(sorted((k, v) for k, v in c["params"].items() if k != "seed"))) for c in store.logged})
    row = csv[(csv.victim_arch == "pspnet") & (csv.shadow_overlap == 0.5) & (csv.defense_label == "gaussian σ=0.1")
              & (csv.attack_label == "patch/slm") & (csv.setting == "dependent")].iloc[0]
    logged = _expected(store, victim_arch="pspnet", shadow_overlap=0.5, defense="gaussian", attack="patch",
                       shadow_dataset="cityscapes", defense_params=json.dumps({"sigma": 0.1}))
    assert len(logged) == 2
    for metric in ("auc", "auc_ci_low", "auc_ci_high", "tpr_at_1pct_fpr", "victim_miou"):
        assert row[f"{metric}_mean"] == pytest.approx(_mean(logged, metric))
    assert row["auc_std"] == pytest.approx(np.std([c["metrics"]["auc"] for c in logged], ddof=1))
    assert row["n_seeds"] == 2 and row["seeds"] == "0;1" and bool(row["strongest"])
    assert 0.999 not in set(csv["auc_mean"].round(3)), "an older invocation leaked into the table"
    failed = csv[(csv.defense == "argmax") & (csv.shadow_overlap == 0.5)]
    assert set(failed["status"]) == {"failed"} and failed["auc_mean"].isna().all()
    assert failed["error"].str.contains("RuntimeError: argmax broke").all()
    dp = csv[(csv.defense_label == "dp_sgd noise_multiplier=1") & (csv.attack == "loss_threshold") & (csv.shadow_overlap == 0)]
    assert dp.iloc[0]["n_seeds"] == 1 and dp.iloc[0]["n_failed"] == 1  # the failed seed is not averaged as 0


def test_leaderboard_markdown_numbers_failed_missing_and_strongest(store: Store, board: dict) -> None:
    md = board["md"]
    # one row per defense and victim arch, at the shadow overlap the attacker picks (calibration AUC): 0.5 here
    logged = _expected(store, victim_arch="pspnet", shadow_overlap=0.5, defense="none", attack="patch",
                       shadow_dataset="cityscapes", control="none")
    row = "| none | pspnet |"
    assert _md_cell(md, DEPENDENT, row, "strongest attack") == "patch/slm"
    auc, low, high = (_mean(logged, m) for m in ("auc", "auc_ci_low", "auc_ci_high"))
    assert _md_cell(md, DEPENDENT, row, "AUC ± std [interval]") == f"{auc:.3f} ± 0.007 [{low:.3f}, {high:.3f}]"
    tprs = [c["metrics"]["tpr_at_1pct_fpr"] for c in logged]
    assert _md_cell(md, DEPENDENT, row, "TPR@1%FPR [interval]") == f"{mean(tprs):.3f} ± {np.std(tprs, ddof=1):.3f}"
    assert _md_cell(md, DEPENDENT, row, "victim mIoU") == f"{_mean(logged, 'victim_miou'):.3f}"
    assert _md_cell(md, DEPENDENT, row, "worst-case shadow") == "overlap 0.5"
    at_zero = _mean(_expected(store, victim_arch="pspnet", shadow_overlap=0.0, defense="none", attack="patch",
                              shadow_dataset="cityscapes", control="none"), "auc")
    assert _md_cell(md, DEPENDENT, row, "AUC by shadow overlap") == f"0: {at_zero:.3f} · 0.5: {auc:.3f}"
    # where the loss statistic beats the patch CNN, it is the one shown
    assert _md_cell(md, DEPENDENT, "| gaussian σ=0.5 | pspnet |", "strongest attack") == "loss_threshold"
    # the strongest attack is the attacker's pick (calibration AUC), even where the victim AUC says otherwise
    assert _md_cell(md, INDEPENDENT, row, "strongest attack") == "loss_threshold"
    # argmax failed at overlap 0.5: its row is the attacker's best among what finished, and says what failed
    assert _md_cell(md, DEPENDENT, "| argmax | pspnet |", "worst-case shadow") == "overlap 0"
    assert _md_cell(md, DEPENDENT, "| argmax | pspnet |", "seeds") == "2 (+4 runs failed)"
    assert "| argmax | deeplabv3 |" not in md  # not in the grid: no row
    assert _md_cell(md, DEPENDENT, "| dp_sgd noise_multiplier=1 | pspnet |", "seeds") == "2 (+2 runs failed)"  # one per overlap
    assert _md_cell(md, INDEPENDENT, "| gaussian σ=0.1 | pspnet |", "TPR@1%FPR [interval]") == "—"
    assert "| 0.000" not in md and " 0.000 " not in md
    victims = md.split("## victim models", 1)[1]
    assert "| cityscapes | dependent | deeplabv3 | dp_sgd | 0 | 200 | 0.580 | 0.380 | 0.200 | 2.000 |" in victims
    assert "| cityscapes | dependent | pspnet | none | 0 | 200 | 0.800 | 0.600 | 0.200 | — |" in victims
    dependent = md.split(f"## {DEPENDENT}", 1)[1].split("\n## ", 1)[0]
    assert "shift test AUC 0.520 (permutation null 0.350 to 0.600, p = 0.41)" in dependent and "no shift detected" in dependent
    independent = md.split(f"## {INDEPENDENT}", 1)[1].split("\n## ", 1)[0]
    assert "FLAGGED: members and non-members differ without any model" in independent
    placebo = md.split("## placebo controls", 1)[1].split("\n## ", 1)[0]
    assert "| patch/slm | 0.510 [0.450, 0.570] | ✓ pass |" in placebo
    assert "| loss_threshold | 0.580 [0.550, 0.610] | ✗ FAIL |" in placebo
    # the key results open the page: the synthetic data named, the headline, the null checks
    key = md.split("## Key results", 1)[1].split("\n## ", 1)[0]
    assert md.index("## Key results") < md.index(f"## {DEPENDENT}")
    assert "**Data: SYNTHETIC: bdd100k, cityscapes are the embedded generated street scenes" in key
    assert f"- Undefended pspnet leaks AUC {auc:.3f} [{low:.3f}, {high:.3f}]" in key
    assert "**Null checks: CHECK FAILED (placebo 1/2 pass, 1 FAIL; blind baseline flagged in 1/2).**" in key
    assert board["key_results"].splitlines()[-1] == "Null checks: CHECK FAILED (placebo 1/2 pass, 1 FAIL; blind baseline flagged in 1/2)."
    assert set(board["csv"]["data_source"]) == set(board["csv"]["shadow_data_source"]) == {"synthetic"}


def test_leaderboard_html_is_self_contained(board: dict) -> None:
    page = board["html"]
    assert "<style>" in page and "http://" not in page and "https://" not in page and "<script src" not in page
    assert ('<td class="failed" title="RuntimeError: argmax broke (seed 0); RuntimeError: argmax broke (seed 1)">'
            "2 (+4 runs failed)</td>") in page
    assert ">loss_threshold</td>" in page and ">patch/slm</td>" in page
    assert html.escape(MISSING_TPR) in page  # the reason a TPR is absent is in the hover text
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # dependent, its placebo, independent, matched utility in each setting, victims
    assert page.count("<table>") == page.count("</table>") == 6
    assert page.index('class="keyresults"') < page.index("<table>")
    assert "matched utility (dependent: victim cityscapes (synthetic), shadow cityscapes (synthetic); pspnet)" in page


def test_unknown_experiment_and_empty_store_are_clear_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SegleakError, match="no MLflow experiment named 'nope'"):
        write_leaderboard(store.uri, "nope", tmp_path)
    missing = store.uri.replace("mlflow.db", "missing.db")
    with pytest.raises(SegleakError, match="no MLflow store at sqlite"):
        write_leaderboard(missing, None, tmp_path)
    assert not Path(missing.removeprefix("sqlite:///")).exists()  # reading never creates a store
    empty = store.uri.replace("mlflow.db", "empty.db")
    MlflowClient(empty).search_experiments()  # a store that exists but holds no benchmark run
    with pytest.raises(SegleakError, match="no segleak benchmark runs in sqlite"):
        write_leaderboard(empty, None, tmp_path)


def _check_image(path: Path) -> None:
    if path.suffix == ".png":
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert 600 <= image.width <= 4000 and 400 <= image.height <= 4000, image.size
    elif path.suffix == ".pdf":
        assert path.read_bytes().startswith(b"%PDF")
    else:  # text stays text (svg.fonttype none), so the figure can be edited
        root = ET.parse(path).getroot()
        assert root.tag.endswith("svg") and root.iter("{http://www.w3.org/2000/svg}text"), path
        assert any(t.text for t in root.iter("{http://www.w3.org/2000/svg}text")), path


def test_write_report_writes_every_plot_and_logs_it_on_the_parent(store: Store, tmp_path: Path, caplog) -> None:
    written = write_report(store.uri, EXPERIMENT, tmp_path, store.parent_id)
    plots = written["plots"]
    stems = {p.stem for p in plots}
    assert {"frontier_dependent_cityscapes_cityscapes", "frontier_independent_cityscapes_bdd100k",
            "heatmap_overlap_arch", "auc_vs_gaussian_sigma", "auc_vs_dp_epsilon", "dependent_vs_independent",
            "roc_dependent_cityscapes_cityscapes_pspnet_pspnet_ov0.5"} <= stems
    assert sum(s.startswith("roc_") for s in stems) == 4  # one per leaderboard row
    assert all(p.with_suffix(s) in plots for p in plots if p.suffix == ".png" for s in (".svg", ".pdf"))
    for path in plots:
        _check_image(path)
    # the index shows every figure under the question it answers, and links the invocation's MLflow run
    index = written["index"][0].read_text()
    for png in (p for p in plots if p.suffix == ".png"):
        assert f'<img src="plots/{png.name}"' in index
        assert str(escape(question(png.stem)[0])) in index
    assert f"/runs/{store.parent_id}" in index and "SYNTHETIC" in index
    client = MlflowClient(store.uri)
    logged = {f.path for d in ("leaderboard", "plots") for f in client.list_artifacts(store.parent_id, d)}
    logged |= {f.path for f in client.list_artifacts(store.parent_id) if not f.is_dir}
    expected = {f"{name}/{p.name}" for name, paths in written.items() if name != "index" for p in paths}
    assert logged == expected | {"index.html"}


def test_plots_skip_what_the_data_lacks(store: Store, tmp_path: Path, caplog) -> None:
    from analysis.aggregate import aggregate, worst_case
    from analysis.plots import plot_dependent_vs_independent, plot_overlap_heatmap
    from analysis.runs import load_runs

    table = aggregate(load_runs(store.uri, EXPERIMENT).cells)
    dependent_only = table[table["setting"] == "dependent"]
    assert plot_dependent_vs_independent(worst_case(dependent_only), tmp_path) == []
    assert plot_overlap_heatmap(table.iloc[0:0], tmp_path) == []
    assert "skipped dependent vs independent" in caplog.text and "skipped overlap heatmap" in caplog.text
    assert not list(tmp_path.iterdir())
