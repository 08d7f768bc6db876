"""MLflow logging in a child process (ray_jobs.running.background_log): the same runs as logging in the driver, errors
handed back to the driver (a damaged cell is still recomputed), a dead child one clear error."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from analysis import schema
from benchmark.errors import SegleakError
from ray_jobs.recording.store import DamagedUnit, ResultStore
from ray_jobs.recording.tracking import Tracker
from ray_jobs.running.reporting import Reporter
from ray_jobs.units.base import Plan, Unit
from ray_jobs.units.kinds.cell import SCORES, CellConfig, CellMeta
from ray_jobs.units.kinds.model import ModelConfig, ModelMeta


def _model(seed: int) -> Unit:
    config = ModelConfig(dataset={"type": "cityscapes"}, root="/data/cityscapes", arch="pspnet_tiny",
                         train_ids=[f"train/c{i:04d}" for i in range(10)], heldout_ids=["val/c0000"], train={},
                         defense={"name": "none", "params": {}}, seed=seed)
    meta = ModelMeta(dataset="cityscapes", arch="pspnet_tiny", role="victim", train_defense="none", overlap="n/a",
                     seed=seed, n_train=10, placebo=False, setting="dependent")
    return Unit("model", f"model-{seed:016d}", config, (), f"victim {seed}", meta)


def _runs(tracker: Tracker) -> set[tuple]:
    """Each nested run as (name, status, params, metrics, tags without ids), comparable across invocations."""
    runs = MlflowClient(tracker.uri).search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{schema.PARENT_TAG}` = '{tracker.parent_id}'")
    return {(r.info.run_name, r.info.status, json.dumps(r.data.params, sort_keys=True),
             json.dumps(r.data.metrics, sort_keys=True),
             json.dumps({k: v for k, v in r.data.tags.items()
                         if not k.startswith(("mlflow.", schema.MEMBER_PREFIX))}, sort_keys=True))
            for r in runs}


def _log(tmp_path, background: bool) -> tuple[set[tuple], list]:
    """Three units logged in one invocation (the store is shared: checkpoint tags name it)."""
    units = [_model(seed) for seed in range(3)]
    plan = Plan({u.key: u for u in units})
    tracker = Tracker(f"sqlite:///{tmp_path / f'mlflow-{background}.db'}", "bg", {"background": background})
    reporter = Reporter(plan, ResultStore(tmp_path / "results"), tracker, background=background)
    reporter.unit_done(units[0], {"miou_train": 0.5, "miou_heldout": 0.25, "dp_epsilon": float("nan")})
    reporter.unit_done(units[1], {"miou_train": 0.75})
    reporter.unit_failed(units[2], "RuntimeError: out of memory")
    errors = reporter.flush()
    reporter.close()
    return _runs(tracker), errors


def test_the_background_logger_writes_the_runs_the_driver_would(tmp_path):
    in_driver, _ = _log(tmp_path, background=False)
    background, errors = _log(tmp_path, background=True)
    assert errors == []
    assert background == in_driver and len(background) == 3
    assert {status for _, status, *_ in background} == {"FINISHED", "FAILED"}
    assert any('"miou_heldout": 0.25' in metrics and "nan" not in metrics for *_, metrics, _ in background)


def _finished_cell(store: ResultStore) -> Unit:
    config = CellConfig(fit="fit-0", release="release-0", victim_model="model-0", dataset={"type": "cityscapes"},
                        output_defense={"name": "none", "params": {}}, scored_ids=["train/c0000", "val/c0000"], seed=0)
    meta = CellMeta(dataset="cityscapes", victim_arch="pspnet_tiny", shadow_dataset="cityscapes",
                    shadow_arch="pspnet_tiny", shadow_overlap=0.5, defense="none", defense_params="{}",
                    defense_label="none", attack="loss_threshold", representation="loss",
                    attack_label="loss threshold", seed=0, control="none", setting="dependent", adaptive=True)
    unit = Unit("cell", "cell-0000000000000000", config, (), "a cell", meta)
    with store.writing("cell", unit.key, {}) as out:
        (out / SCORES).write_text("image_id,group,is_member,score\ntrain/c0000,a,1,0.9\nval/c0000,b,0,0.1\n")
        (out / "roc.png").write_bytes(b"png")
        (out / "summary.json").write_text(json.dumps({"auc": 1.0}))
    return unit


def test_a_damaged_cell_the_logger_meets_comes_back_from_flush(tmp_path):
    """As when the driver logged it: the scheduler recomputes a finished cell whose scores went bad."""
    store = ResultStore(tmp_path / "results")
    unit = _finished_cell(store)
    scores = store.local_root / "cell" / unit.key / SCORES
    scores.write_text(scores.read_text().replace("0.9", "0.8"))  # same size, other content
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "bg", {})
    reporter = Reporter(Plan({unit.key: unit}), store, tracker, background=True)
    try:
        reporter.unit_done(unit, {"auc": 1.0})
        ((key, error),) = reporter.flush()
    finally:
        reporter.kill()
    assert key == unit.key and isinstance(error, DamagedUnit) and "scores.csv: sha256 mismatch" in str(error)
    assert not store.is_done("cell", unit.key)  # moved aside, to be recomputed


def test_a_logger_that_died_is_one_clear_error(tmp_path):
    unit = _model(0)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "bg", {})
    reporter = Reporter(Plan({unit.key: unit}), ResultStore(tmp_path / "results"), tracker, background=True)
    reporter.logger._process.kill()
    reporter.unit_done(unit, {})
    with pytest.raises(SegleakError, match="MLflow logging process exited with code -9"):
        reporter.flush()
    reporter.close()  # nothing left to do, and no second error
