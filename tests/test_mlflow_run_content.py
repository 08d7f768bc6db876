"""What each MLflow run says (issue 26): names that tell runs apart (setting, defense, attack, control), one
parameter vocabulary across run kinds, the unit's own start and end, per-epoch curves of a trained model, and
the headline and null-check counts on the invocation's run."""

from __future__ import annotations

import time

import pytest
from conftest import fit_model
from mlflow.tracking import MlflowClient

from analysis import schema
from analysis.run_metrics import invocation_metrics
from analysis.runs import load_runs
from benchmark.models.train import TrainConfig
from ray_jobs.recording.store import ResultStore
from ray_jobs.recording.tracking import CURVE_PREFIX, Tracker
from ray_jobs.units.base import Unit
from ray_jobs.units.kinds.cell import CellKind, CellMeta
from ray_jobs.units.kinds.model import ModelKind, ModelMeta
from ray_jobs.units.kinds.noop import NoopConfig, NoopKind, NoopMeta


@pytest.fixture
def tracker(tmp_path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "segleak-content", {}, artifact_root=str(tmp_path),
                   locks=ResultStore(tmp_path))


def _cell(control: str, defense: str = "gaussian", attack: str = "loss threshold") -> Unit:
    meta = CellMeta(dataset="cityscapes", victim_arch="pspnet_tiny", shadow_dataset="cityscapes",
                    shadow_arch="pspnet_tiny", shadow_overlap=0.5, defense=defense, defense_params="{}",
                    defense_label=defense, attack="loss_threshold", representation="loss", attack_label=attack,
                    seed=0, control=control, setting="dependent", adaptive=False)
    return Unit("cell", f"cell-{control}-{defense}-{attack}", None, (), "a cell", meta)


def test_run_names_tell_apart_what_differs_and_params_share_one_vocabulary(tracker):
    cells = [_cell("none"), _cell("placebo"), _cell("none", defense="argmax"), _cell("none", attack="patch/slm")]
    for unit in cells:
        CellKind().log_failure(tracker, unit, "boom")
    victim = ModelMeta(dataset="cityscapes", arch="pspnet_tiny", role="victim", train_defense="none", overlap=0.5,
                       seed=0, n_train=16, placebo=True, setting="dependent")
    ModelKind().log_failure(tracker, Unit("model", "model-v", None, (), "victim", victim), "boom")
    runs = MlflowClient(tracker.uri).search_runs([tracker.experiment_id], f"tags.`{schema.KIND_TAG}` != 'invocation'")
    names = {r.data.tags[schema.UNIT_TAG]: r.info.run_name for r in runs}
    assert len(set(names.values())) == len(names) == 5
    assert names["cell-placebo-gaussian-loss threshold"] == (
        "dependent · gaussian · loss threshold · pspnet_tiny <- pspnet_tiny ov=0.5 seed 0 · placebo")
    assert names["model-v"] == "dependent · none · victim · pspnet_tiny cityscapes ov=0.5 seed 0 · placebo"
    for run in runs:  # the victim's arch and the attacker's overlap go by one name in every kind of run
        assert {"arch", "overlap"} <= set(run.data.params) and not {"victim_arch", "shadow_overlap"} & set(run.data.params)
    read = load_runs(tracker.uri, "segleak-content", tracker.parent_id).cells  # the reader's columns stay
    assert set(read["victim_arch"]) == {"pspnet_tiny"} and set(read["shadow_overlap"]) == {0.5}


def test_a_units_run_spans_its_computation_not_its_logging(tracker, tmp_path):
    store = tracker.locks
    unit = Unit("noop", "noop-span", NoopConfig("cell", 0), (), "noop", NoopMeta(logs=True))
    with store.writing("noop", unit.key, {}) as out:
        time.sleep(0.3)  # the unit's own work
        (out / "summary.json").write_text("{}")
    time.sleep(0.5)  # then it waits to be logged
    tracker.log_unit(NoopKind(), unit, {}, store)
    record = store.read_unit("noop", unit.key)
    run = MlflowClient(tracker.uri).search_runs([tracker.experiment_id], f"tags.`{schema.UNIT_TAG}` = 'noop-span'")[0]
    assert run.info.start_time == int(record["started"] * 1000)
    assert run.info.end_time - run.info.start_time == pytest.approx(record["seconds"] * 1000, abs=2)
    assert 300 <= run.info.end_time - run.info.start_time < 800


def test_a_trained_models_run_has_its_per_epoch_curves(tracker, small_cityscapes, tmp_path):
    root, ids = small_cityscapes
    cfg = TrainConfig(arch="pspnet_tiny", epochs=3, batch_size=3, lr=3e-3, image_size=(32, 64))
    result = fit_model(cfg, root, ids[:6], ids[6:], tmp_path / "model")
    assert len(result.curves) == 3 and {"train_loss", "miou_heldout", "loss_heldout"} <= set(result.curves[0])
    assert [c["train_loss"] for c in result.curves] == pytest.approx(
        [result.metrics["train_loss_first"], result.curves[1]["train_loss"], result.metrics["train_loss_last"]])
    run_id = tracker.log_run(schema.MODEL, "victim", {"arch": "pspnet_tiny"}, metrics=result.metrics, curves=result.curves)
    client = MlflowClient(tracker.uri)
    history = client.get_metric_history(run_id, f"{CURVE_PREFIX}miou_heldout")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    assert client.get_run(run_id).data.metrics["miou_heldout"] == pytest.approx(result.metrics["miou_heldout"])


def _log_cell(tracker: Tracker, control: str, defense: str, auc: float, low: float, high: float) -> None:
    params = {"dataset": "cityscapes", "arch": "pspnet", "shadow_dataset": "cityscapes", "shadow_arch": "pspnet",
              "overlap": 0.0, "defense": defense, "defense_params": "{}", "attack": "loss_threshold",
              "representation": "statistic", "seed": 0, "control": control, "attack_label": "loss_threshold",
              "defense_label": defense}
    tracker.log_run(schema.CELL, f"{defense} {control}", params, {schema.UNIT_TAG: f"{defense}-{control}",
                                                                  schema.SETTING_TAG: "dependent"},
                    {"auc": auc, "auc_ci_low": low, "auc_ci_high": high, "calibration_auc": auc,
                     "tpr_at_1pct_fpr": auc - 0.5})


def test_the_invocation_run_holds_the_headline_and_the_null_check_counts(tracker):
    _log_cell(tracker, "none", "none", 0.80, 0.72, 0.88)
    _log_cell(tracker, "none", "gaussian", 0.60, 0.52, 0.68)
    _log_cell(tracker, "placebo", "none", 0.51, 0.42, 0.60)  # contains chance: passes
    _log_cell(tracker, "placebo", "gaussian", 0.66, 0.56, 0.76)  # excludes chance: the null check fails
    tracker.log_headline()
    metrics = tracker.client.get_run(tracker.parent_id).data.metrics
    assert metrics["undefended_auc"] == pytest.approx(0.80) and metrics["least_leaking_defense_auc"] == pytest.approx(0.60)
    assert metrics["undefended_tpr_at_1pct_fpr"] == pytest.approx(0.30)
    assert (metrics["null_placebo_pass"], metrics["null_placebo_fail"], metrics["null_placebo_open"]) == (1, 1, 0)
    assert (metrics["null_blind_flagged"], metrics["null_blind_total"]) == (0, 0)
    # the count follows the intervals: the same placebo inside chance passes
    runs = load_runs(tracker.uri, "segleak-content", tracker.parent_id)
    fixed = runs.cells.assign(auc_ci_low=runs.cells["auc_ci_low"].where(runs.cells["control"] == "none", 0.45))
    counts = invocation_metrics(type(runs)(**{**runs.__dict__, "cells": fixed}))
    assert (counts["null_placebo_pass"], counts["null_placebo_fail"]) == (2, 0)
