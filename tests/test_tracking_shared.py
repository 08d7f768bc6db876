"""MLflow side of shared results folders (issue 18): artifacts under the results folder, one run per unit
across invocations, dead invocations closed, the experiment's kind, concurrent creation of a SQLite store.

One SQLite store per module (creating MLflow's tables costs seconds on the project's 2-core machines).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis import schema
from analysis.report import write_report
from analysis.runs import load_runs
from ray_jobs.recording.store import HOST_ID, _process_start
from ray_jobs.recording.tracking import Tracker

CELL = {"dataset": "cityscapes", "victim_arch": "pspnet", "shadow_dataset": "cityscapes", "shadow_arch": "pspnet",
        "shadow_overlap": 0.0, "defense": "none", "defense_params": "{}", "attack": "loss_threshold",
        "representation": "statistic", "seed": 0, "control": "none"}
METRICS = {"auc": 0.61, "auc_ci_low": 0.52, "auc_ci_high": 0.70, "calibration_auc": 0.6, "victim_miou": 0.4,
           "n_members": 40, "n_nonmembers": 40}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def uri(results: Path) -> str:
    return f"sqlite:///{results / 'mlflow.db'}"


def tracker(uri: str, results: Path, experiment: str = "segleak-shared") -> Tracker:
    return Tracker(uri, experiment, {"results": str(results)}, artifact_root=str(results))


def log_cell(tracker: Tracker, key: str, scores: Path) -> str:
    return tracker.log_run(schema.CELL, f"loss_threshold pspnet none {key}", CELL, {schema.UNIT_TAG: key},
                           METRICS, [scores])


def test_artifacts_stay_under_the_results_folder_whatever_the_current_folder(uri, results, tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scores = tmp_path / "scores.csv"
    scores.write_text("image_id,is_member,score\na,1,0.5\n")
    first = tracker(uri, results, "segleak-artifacts")
    run_id = log_cell(first, "cell-artifacts", scores)
    first.finish("FINISHED")
    assert not list(elsewhere.iterdir())  # no ./mlruns, nothing else
    uri_of_run = first.client.get_run(run_id).info.artifact_uri
    assert uri_of_run.startswith((results / "mlartifacts").as_uri())
    assert list((results / "mlartifacts").rglob("scores.csv"))
    experiment = first.client.get_experiment(first.experiment_id)
    # MLflow 3's UI opens an experiment of this kind on its runs table, not the GenAI overview
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    name = first.client.get_run(first.parent_id).info.run_name
    assert name.startswith("segleak-artifacts 20") and " on " in name  # grid, date and time, host


def test_a_unit_is_logged_once_and_every_invocation_that_uses_it_lists_it(uri, results, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("image_id,is_member,score\na,1,0.5\n")
    first = tracker(uri, results)
    logged = log_cell(first, "cell-a", scores)
    first.finish("FINISHED")
    second = tracker(uri, results)  # a resumed invocation: the unit is finished and logged already
    assert second.reuse("cell-a") == logged and second.reuse("cell-b") is None
    second.finish("FINISHED")
    client = MlflowClient(uri)
    experiment = first.experiment_id
    assert len(client.search_runs([experiment], f"tags.`{schema.UNIT_TAG}` = 'cell-a'")) == 1
    for parent in (first.parent_id, second.parent_id):
        cells = load_runs(uri, "segleak-shared", parent).cells
        assert list(cells["run_id"]) == [logged]


def test_two_invocations_logging_one_unit_at_once_keep_one_run(uri, results, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("image_id,is_member,score\na,1,0.5\n")
    a, b = tracker(uri, results), tracker(uri, results)
    assert a.reuse("cell-c") is None and b.reuse("cell-c") is None  # both looked before either logged
    kept_by_a = log_cell(a, "cell-c", scores)
    kept_by_b = log_cell(b, "cell-c", scores)
    assert kept_by_a == kept_by_b  # the second to finish found the first's run and deleted its own
    runs = MlflowClient(uri).search_runs([a.experiment_id], f"tags.`{schema.UNIT_TAG}` = 'cell-c'")
    assert [r.info.run_id for r in runs] == [kept_by_a]
    assert {schema.member_tag(a.parent_id), schema.member_tag(b.parent_id)} <= set(runs[0].data.tags)
    for invocation in (a, b):
        assert list(load_runs(uri, "segleak-shared", invocation.parent_id).cells["run_id"]) == [kept_by_a]
        invocation.finish("FINISHED")


def test_a_dead_invocations_run_is_marked_killed_a_live_ones_is_left_running(uri, results):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("segleak-shared").experiment_id
    gone = subprocess.Popen(["sleep", "60"])
    start = _process_start(gone.pid)
    gone.kill()
    gone.wait()

    def invocation(pid: int, pid_start: str) -> str:
        run = client.create_run(experiment, tags={schema.KIND_TAG: schema.INVOCATION, schema.HOST_ID_TAG: HOST_ID,
                                                  schema.PID_TAG: str(pid), schema.PID_START_TAG: pid_start})
        return run.info.run_id

    dead, alive = invocation(gone.pid, start), invocation(os.getpid(), _process_start(os.getpid()))
    child = client.create_run(experiment, tags={schema.PARENT_TAG: dead, schema.KIND_TAG: schema.CELL}).info.run_id
    later = tracker(uri, results)
    assert later.closed == [dead]
    assert client.get_run(dead).info.status == client.get_run(child).info.status == "KILLED"
    assert "was gone" in client.get_run(dead).data.tags["segleak.ended"]
    assert client.get_run(alive).info.status == "RUNNING"
    later.finish("KILLED", "stopped by SIGTERM")
    assert client.get_run(later.parent_id).info.status == "KILLED"
    client.set_terminated(alive)


def test_the_report_of_an_invocation_without_cells_is_written(uri, results, tmp_path):
    empty = tracker(uri, results, "segleak-empty")
    written = write_report(uri, "segleak-empty", tmp_path / "report", empty.parent_id)
    assert written["plots"] == []
    assert "no attack cells" in (tmp_path / "report" / "leaderboard" / "leaderboard.md").read_text()
    empty.finish("FINISHED")


RACE = """
import sys, time
from pathlib import Path
from ray_jobs.recording.tracking import Tracker
Path(sys.argv[3]).touch()  # imported: ready to start at the same moment as the other process
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
Tracker(f"sqlite:///{sys.argv[1]}", "segleak-race", {}, artifact_root=str(Path(sys.argv[1]).parent))
print("ok")
"""


@pytest.mark.slow
def test_two_invocations_creating_one_new_sqlite_store_both_start(tmp_path):
    db, go = tmp_path / "new" / "mlflow.db", tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(db), str(go), str(flag)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for flag in ready]
    deadline = time.time() + 180
    while not all(flag.exists() for flag in ready) and time.time() < deadline:
        time.sleep(0.1)
    go.touch()  # both create the store's tables and the experiment at once (without the lock one fails)
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    client = MlflowClient(f"sqlite:///{db}")
    assert len(client.search_runs([client.get_experiment_by_name("segleak-race").experiment_id])) == 2
