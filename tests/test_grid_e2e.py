"""End to end on the smoke profile, through the real CLI, Ray, Lightning/mmseg and MLflow (SQLite).

Slow: each invocation starts a local Ray instance and trains real (tiny) models.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ray_jobs.grid.spec import PROFILES_DIR
from ray_jobs.recording.store import ResultStore

pytestmark = pytest.mark.slow

# one vocabulary with the model runs: the victim's arch is `arch`, the shadow's overlap with its members `overlap`
CELL_PARAMS = {"dataset", "arch", "shadow_dataset", "shadow_arch", "overlap", "defense",
               "defense_params", "attack", "representation", "seed"}
CELL_METRICS = {"auc", "auc_ci_low", "auc_ci_high", "balanced_accuracy", "precision", "recall", "victim_miou",
                "n_members", "n_nonmembers"}
MODEL_PARAMS = {"dataset", "arch", "role", "train_defense", "overlap", "seed", "n_train"}


def child_env() -> dict[str, str]:
    """This process's environment as it is now (a test's monkeypatched AWS_* included), importable as here."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def segleak(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=cwd)


def start(results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli", "benchmark", "--profile", "smoke", "--results",
                             str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def sessions_of(driver: subprocess.Popen) -> list[Path]:
    """The Ray session folders the driver marked as its own (ray_jobs.running.ray_session)."""
    from ray_jobs.running.ray_session import MARK, ray_temp_dir

    return [s for s in ray_temp_dir().glob("session_*")
            if not s.is_symlink() and (s / MARK).is_file() and json.loads((s / MARK).read_text())["pid"] == driver.pid]


def wait_for_first_model(results: Path, driver: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not any(e["kind"] == "model" for e in ledger(results)):
        assert driver.poll() is None and time.time() < deadline, "the first model never finished"
        time.sleep(0.2)


def ledger(results: Path) -> list[dict]:
    return ResultStore(results).ledger()


def invocations(results: Path) -> list:
    """The invocation runs, newest first."""
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segleak-smoke")
    return client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'invocation'",
                              order_by=["attributes.start_time DESC"])


def runs(results: Path, kind: str, every: bool = False) -> list:
    """The latest invocation's runs of a kind (its own and those it reused), or `every` run of the kind."""
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segleak-smoke")
    member = f"segleak.in.{invocations(results)[0].info.run_id}"
    return [r for r in client.search_runs([experiment.experiment_id], f"tags.`segleak.kind` = '{kind}'", max_results=5000)
            if every or r.data.tags.get(member) == "true"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke")
    started = time.time()
    elsewhere = tmp_path_factory.mktemp("cwd")
    first = segleak("benchmark", "--profile", "smoke", "--results", str(results), cwd=elsewhere)
    first_seconds = time.time() - started
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert not list(elsewhere.iterdir())  # no ./mlruns: artifacts live under the results folder
    return results, first, first_seconds


def test_mlflow_runs_follow_the_schema(smoke):
    results, first, _ = smoke
    models, cells = runs(results, "model"), runs(results, "attack")
    # victim and adaptive shadow per training defense (none, dp_sgd), a placebo victim per training defense;
    # cells: 4 defenses x 3 attacks, and again with the placebo victim
    assert len(models) == 6 and len(cells) == 24
    assert {r.data.tags["segleak.adaptive"] for r in cells} == {"true"}
    for run in models:
        assert MODEL_PARAMS <= set(run.data.params)
        assert {"miou_train", "miou_heldout"} <= set(run.data.metrics)
        assert ("dp_epsilon" in run.data.metrics) == run.data.params["train_defense"].startswith("dp_sgd")
    dp = [r for r in models if "dp_epsilon" in r.data.metrics]
    assert len(dp) == 3 and all(0 < r.data.metrics["dp_epsilon"] < 100 for r in dp)
    assert all(r.data.metrics["dp_delta"] <= 1e-5 for r in dp)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    for run in cells:
        assert CELL_PARAMS <= set(run.data.params)
        # a metric may be absent only with its reason (e.g. precision when no image is called a member)
        absent = CELL_METRICS - set(run.data.metrics)
        assert all(f"segleak.missing.{name}" in run.data.tags for name in absent), absent
        assert {"auc", "auc_ci_low", "auc_ci_high", "victim_miou", "n_members", "n_nonmembers"} <= set(run.data.metrics)
        assert 0 <= run.data.metrics["auc_ci_low"] <= run.data.metrics["auc"] <= run.data.metrics["auc_ci_high"] <= 1
        # 16 non-members cannot resolve a 1% (or 0.1%) FPR: missing, with the reason in a tag
        for name in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
            assert name not in run.data.metrics
            assert "non-members" in run.data.tags[f"segleak.missing.{name}"]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"roc.png", "scores.csv"}
    placebo = [r for r in cells if r.data.params["control"] == "placebo"]
    assert len(placebo) == 12
    blind = runs(results, "blind")
    assert len(blind) == 1 and {"blind_auc", "blind_auc_ci_low", "shift_auc"} <= set(blind[0].data.metrics)
    assert "== segleak summary ==" in first.stdout and "leaderboard:" in first.stdout, first.stdout[-3000:]
    assert "\r" not in first.stdout + first.stderr  # plain lines in a log, no redrawn bars
    # each unit's line says where the run stands; the end says what was found, not only where it is
    assert re.search(r"^\[\s*\d+/\d+ [\dhms]+, ~[^\]]+ left\] \+ ", first.stdout, flags=re.M), first.stdout[-3000:]
    summary = first.stdout.split("== segleak summary ==", 1)[1]
    assert "Data: SYNTHETIC: " in summary and "Undefended " in summary and "Null checks: " in summary, summary
    index = (results / "report" / "index.html").read_text()
    assert 'src="leakage/' in index and 'src="plots/' in index
    (parent,) = invocations(results)
    assert set(json.loads(parent.data.params["data_sources"]).values()) == {"synthetic"}
    assert parent.info.status == "FINISHED" and parent.data.tags["segleak.leaderboard"].endswith("leaderboard.html")
    assert "leaderboard/leaderboard.html" in parent.data.tags["mlflow.note.content"]
    assert all(r.info.artifact_uri.startswith((results / "mlartifacts").as_uri()) for r in cells + [parent])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"leaderboard", "plots", "leakage"}
    # issue 26: names tell the runs apart; each run spans its unit's computation; models have per-epoch curves;
    # the invocation's run holds the headline and the null-check counts
    names = [r.info.run_name for r in models + cells + blind]
    assert len(set(names)) == len(names), sorted(names)
    assert all(r.info.run_name.endswith(" · placebo") for r in placebo)
    for run in models + cells:
        marker = json.loads((results / ("model" if run in models else "cell") / run.data.tags["segleak.unit"]
                             / "unit.json").read_text())
        assert run.info.start_time == int(marker["started"] * 1000)
        assert abs(run.info.end_time - run.info.start_time - marker["seconds"] * 1000) <= 2
    for run in models:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch_train_loss"))
        assert steps and steps == list(range(1, len(steps) + 1))
        assert len(client.get_metric_history(run.info.run_id, "epoch_miou_heldout")) == len(steps)
    headline = parent.data.metrics
    assert 0 < headline["undefended_auc"] < 1
    assert headline["null_placebo_pass"] + headline["null_placebo_fail"] + headline["null_placebo_open"] == 12
    assert headline["null_blind_total"] == 1


def test_scores_artifact_matches_logged_auc(smoke):
    """Every cell's scores.csv reproduces its logged AUC: the file is what figures and reviewers re-read."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    results, _, _ = smoke
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    cells = [r for r in runs(results, "attack") if r.data.params["control"] == "none"]
    assert len({r.data.params["attack"] for r in cells}) >= 3
    for run in cells:
        scores = pd.read_csv(client.download_artifacts(run.info.run_id, "scores.csv"))
        assert list(scores.columns) == ["image_id", "group", "is_member", "score"]
        # overlap 0.5 of 12 shadow members: the 6 the attacker trained on are not scored
        assert scores["is_member"].sum() == run.data.metrics["n_members"] == 10
        assert run.data.metrics["n_excluded"] == 6 and 0 <= run.data.metrics["calibration_auc"] <= 1
        auc = roc_auc_score(scores["is_member"], scores["score"])
        assert auc == pytest.approx(run.data.metrics["auc"], abs=1e-9), run.data.params


def test_training_loaded_exactly_the_member_list(smoke):
    results, _, _ = smoke
    for unit in (results / "model").iterdir():
        config = json.loads((unit / "unit.json").read_text())["config"]
        seen = json.loads((unit / "seen_train_ids.json").read_text())
        assert sorted(seen) == sorted(config["train_ids"])
        assert not set(seen) & set(config["heldout_ids"])


def test_report_is_written(smoke):
    results, _, _ = smoke
    report = results / "report"
    assert (report / "leaderboard" / "leaderboard.md").read_text().count("pspnet_tiny") >= 1
    assert list((report / "plots").glob("*.png")) and list((report / "leakage").glob("*.png"))


def test_second_invocation_recomputes_nothing(smoke):
    results, _, first_seconds = smoke
    before = ledger(results)
    started = time.time()
    second = segleak("benchmark", "--profile", "smoke", "--results", str(results))
    seconds = time.time() - started
    assert second.returncode == 0, second.stderr[-2000:]
    assert ledger(results) == before
    assert "49 units in the plan: 49 already finished, 0 to run" in second.stdout
    assert len(runs(results, "attack")) == 24  # the new invocation's runs are complete, from the store
    assert len(runs(results, "attack", every=True)) == 24  # and reused: no unit is logged twice
    assert seconds < first_seconds


def test_killed_run_resumes_and_trains_every_model_once(tmp_path):
    from ray_jobs.running.ray_session import holders

    results = tmp_path / "killed"
    driver = start(results)
    wait_for_first_model(results, driver)
    sessions = sessions_of(driver)
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    finished_before = Counter(e["kind"] for e in ledger(results))
    assert finished_before["cell"] < 24  # killed mid-way
    (killed,) = invocations(results)
    assert killed.info.status == "RUNNING"  # nobody was left to end it
    resumed = segleak("benchmark", "--profile", "smoke", "--results", str(results))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trained = Counter(e["key"] for e in ledger(results) if e["kind"] == "model")
    assert len(trained) == 6 and set(trained.values()) == {1}
    assert not list(results.glob("*/.tmp-*"))  # no half-written unit left behind
    assert len(runs(results, "attack")) == 24
    # the resumed invocation closed the killed one's run and logged each unit once in the experiment
    later, first = invocations(results)
    assert first.info.run_id == killed.info.run_id and first.info.status == "KILLED"
    assert later.info.status == "FINISHED"
    for kind, n in (("attack", 24), ("model", 6), ("blind", 1)):
        logged = Counter(r.data.tags["segleak.unit"] for r in runs(results, kind, every=True))
        assert len(logged) == n and set(logged.values()) == {1}
    # the killed driver's Ray session: its folder removed and nothing of it still running
    assert len(sessions) == 1 and not sessions[0].exists() and not holders(sessions[0])


def test_sigterm_stops_the_run_like_ctrl_c(tmp_path):
    from ray_jobs.running.ray_session import holders

    results = tmp_path / "terminated"
    driver = start(results)
    wait_for_first_model(results, driver)
    (session,) = sessions_of(driver)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-3000:]
    assert err.splitlines()[-1] == "segleak: stopped by SIGTERM"
    (parent,) = invocations(results)
    assert parent.info.status == "KILLED" and parent.data.tags["segleak.ended"] == "stopped by SIGTERM"
    assert not holders(session)  # Ray is down: no raylet, GCS, agent or worker of the run is left


def test_a_failing_unit_leaves_the_others_complete(tmp_path):
    grid = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    grid.update(name="segleak-smoke", controls=[], attacks=["loss_threshold"],
                # an absurd weight decay drives the weights to inf: the NaN loss fails that model, by design
                defenses=["none", "argmax", {"name": "weight_decay", "value": 1.0e30}])
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    results = tmp_path / "r"
    run = segleak("benchmark", "--grid", str(path), "--results", str(results))
    assert run.returncode == 1
    # the victim and its adaptive shadow both train with the absurd decay: 2 failures, 4 units downstream
    assert "FAILED: 6 units (2 failed, 4 skipped because of them)" in run.stdout and "loss is nan" in run.stdout
    cells = runs(results, "attack")
    by_defense = {r.data.params["defense"]: r for r in cells}
    assert by_defense["weight_decay"].info.status == "FAILED"
    assert "upstream" in by_defense["weight_decay"].data.tags["segleak.error"]
    assert by_defense["none"].info.status == by_defense["argmax"].info.status == "FINISHED"
    assert "auc" in by_defense["argmax"].data.metrics
    failed_models = [r for r in runs(results, "model") if r.info.status == "FAILED"]
    assert len(failed_models) == 2 and all("loss is nan" in r.data.tags["segleak.error"] for r in failed_models)
    board = (results / "report" / "leaderboard" / "leaderboard.md").read_text()
    assert "failed" in board


def test_smoke_grid_on_a_generic_dataset_with_seven_classes(tmp_path):
    """Bring your own data: a dataset in mmseg's img_dir/ann_dir layout declared in the grid with 7 classes
    (the synthetic twin labelled with the Cityscapes categories) runs end to end; nothing assumes 19."""
    grid = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    classes = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
    grid.update(name="segleak-generic", datasets={"streets": {"type": "generic", "root": "synthetic", "classes": classes}},
                settings=[{"dataset": "streets"}], defenses=["none", {"name": "topk", "k": 3}],
                attacks=[{"name": "patch", "representation": "slm"}, "loss_threshold"], controls=[])
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    results = tmp_path / "r"
    run = segleak("benchmark", "--grid", str(path), "--results", str(results))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segleak-generic")
    cells = client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'attack'")
    assert len(cells) == 4 and all(0 <= r.data.metrics["auc"] <= 1 for r in cells)
    model = next((results / "model").iterdir())
    import torch

    assert torch.load(model / "model.pt", weights_only=True)["num_classes"] == 7
    assert list((results / "release").glob("*/outputs.npz"))
