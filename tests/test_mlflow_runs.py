"""One MLflow run per unit (issue 27 item 7): two invocations logging the same units at the same time, in two
processes, create one run each; a unit's FAILED run is replaced when a later invocation finishes the unit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from analysis import schema
from ray_jobs.recording.store import ResultStore
from ray_jobs.recording.tracking import REPLACED_TAG, Tracker

ROOT = Path(__file__).resolve().parents[1]
N_UNITS = 16

# one invocation: open the tracker, wait for the start signal, log every unit's run as a unit kind does
INVOCATION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from analysis import schema
    from ray_jobs.recording.store import ResultStore
    from ray_jobs.recording.tracking import Tracker

    results, uri, go, n = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    store = ResultStore(results)
    tracker = Tracker(uri, "segleak-race", {"results": str(results)}, artifact_root=str(results), locks=store)
    print(tracker.parent_id, flush=True)
    while not go.exists():
        time.sleep(0.01)
    for i in range(n):
        key = f"unit-{i:03d}"
        if tracker.reuse(key) is None:
            tracker.log_run(schema.CELL, f"cell {i}", {"dataset": "a", "seed": i}, {schema.UNIT_TAG: key}, {"auc": 0.5})
    tracker.finish("FINISHED")
""")


def _active_runs(client: MlflowClient, experiment_id: str, unit_key: str):
    return client.search_runs([experiment_id], f"tags.`{schema.UNIT_TAG}` = '{unit_key}'")


def test_two_concurrent_invocations_create_one_run_per_unit(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "segleak-race", {}, artifact_root=str(tmp_path)).finish("FINISHED")  # the store exists
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    procs = [subprocess.Popen([sys.executable, "-c", INVOCATION, str(tmp_path), uri, str(go), str(N_UNITS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    parents = [p.stdout.readline().strip() for p in procs]  # both trackers are open before either logs
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=240) == 0, proc.stderr.read()[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("segleak-race").experiment_id
    counts = [len(_active_runs(client, experiment, f"unit-{i:03d}")) for i in range(N_UNITS)]
    assert counts == [1] * N_UNITS
    for parent in parents:  # each invocation lists every unit, whichever of them logged it
        listed = client.search_runs([experiment], f"tags.`{schema.member_tag(parent)}` = 'true'", max_results=1000)
        assert len(listed) == N_UNITS
    nested = {p: len(client.search_runs([experiment], f"tags.`{schema.PARENT_TAG}` = '{p}'", max_results=1000))
              for p in parents}
    assert sum(nested.values()) == N_UNITS  # created once, by one of them; nothing deleted afterwards
    assert not client.search_runs([experiment], "", run_view_type=ViewType.DELETED_ONLY)


def test_a_units_failed_run_is_replaced_when_a_later_invocation_finishes_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = ResultStore(tmp_path)

    def invocation() -> Tracker:
        return Tracker(uri, "segleak-resume", {}, artifact_root=str(tmp_path), locks=store)

    first = invocation()
    failed = first.log_run(schema.CELL, "cell", {"dataset": "a"}, {schema.UNIT_TAG: "cell-f", schema.ERROR_TAG: "boom"},
                           status="FAILED")
    first.finish("FAILED")
    time.sleep(0.01)
    second = invocation()
    assert second.reuse("cell-f") is None  # a FAILED run is not a result
    finished = second.log_run(schema.CELL, "cell", {"dataset": "a"}, {schema.UNIT_TAG: "cell-f"}, {"auc": 0.6})
    client = MlflowClient(uri)
    runs = _active_runs(client, second.experiment_id, "cell-f")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(finished, "FINISHED")]
    assert {schema.member_tag(first.parent_id), schema.member_tag(second.parent_id)} <= set(runs[0].data.tags)
    old = client.get_run(failed)
    assert old.info.lifecycle_stage == "deleted" and old.data.tags[REPLACED_TAG] == finished
    # a failure logged after the unit finished elsewhere does not add a second run
    assert second.log_run(schema.CELL, "cell", {"dataset": "a"}, {schema.UNIT_TAG: "cell-f"}, status="FAILED") == finished
    assert len(_active_runs(client, second.experiment_id, "cell-f")) == 1
    second.finish("FINISHED")


def test_a_copied_results_folder_is_refused_before_it_writes_into_the_original(tmp_path):
    import shutil

    from benchmark.errors import SegleakError

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (tmp_path / "note.txt").write_text("an artifact")
    first = Tracker(f"sqlite:///{original / 'mlflow.db'}", "segleak-copied", {}, artifact_root=str(original))
    first.log_run(schema.CELL, "cell", {"dataset": "a"}, {schema.UNIT_TAG: "cell-c"}, artifacts=[tmp_path / "note.txt"])
    first.finish("FINISHED")
    shutil.copytree(original, copy)
    before = sorted(p.relative_to(original) for p in original.rglob("*"))
    try:
        Tracker(f"sqlite:///{copy / 'mlflow.db'}", "segleak-copied", {}, artifact_root=str(copy))
    except SegleakError as refusal:
        message = str(refusal)
    else:
        raise AssertionError("a copied results folder was accepted")
    assert f"{original}/mlartifacts" in message and str(copy) in message and "copied or moved" in message
    assert sorted(p.relative_to(original) for p in original.rglob("*")) == before  # nothing written there
    # the folder itself is fine: its own store is accepted again
    Tracker(f"sqlite:///{original / 'mlflow.db'}", "segleak-copied", {}, artifact_root=str(original)).finish("FINISHED")
