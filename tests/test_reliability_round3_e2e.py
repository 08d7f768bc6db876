"""Reliability, round three, end to end through the real CLI, Ray, Lightning/mmseg and MLflow (issue 27): a full
disk met by torch.save ends the run in one line naming it, nothing is retried, and the same command runs
through once space is freed; Ctrl-C marks the invocation's run KILLED "stopped by SIGINT".

Slow: each invocation starts a local Ray instance and trains real (tiny) models.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ray_jobs.grid.spec import PROFILES_DIR
from ray_jobs.recording.store import ResultStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path) -> Path:
    """The smoke profile cut to one victim and one shadow model, and the cells on them."""
    grid = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    grid.update(defenses=["none"], attacks=["loss_threshold"], controls=[])
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _command(grid: Path, results: Path, tracking: str) -> list[str]:
    return [sys.executable, "-m", "benchmark.cli", "benchmark", "--grid", str(grid), "--results", str(results),
            "--tracking-uri", tracking, "--max-concurrent", "1"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture
def disk(tmp_path):
    """A 16 MiB tmpfs (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_in_one_line_without_retries_and_freeing_space_recovers(disk, tmp_path):
    results = disk / "results"
    filler = disk / "filler"  # 12.5 MiB of 16: the data fits, a 3.1 MiB model.pt does not
    filler.write_bytes(b"\0" * (25 << 19))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = _grid(tmp_path)
    run = subprocess.run(_command(grid, results, tracking), capture_output=True, text=True, timeout=600, env=_env())
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"segleak: error: disk full at {results / 'model'}/model-"), lines
    assert lines[0].endswith("KiB free): free some space and run again; finished units are kept")
    progress = [line for line in run.stdout.splitlines() if line.startswith("[")]
    failed = [line for line in progress if " x " in line]
    assert len(failed) == 1 and progress[-1] == failed[0] and " x model " in failed[0], run.stdout[-3000:]
    assert "FAILED: disk full at" in failed[0] and "retries" not in failed[0]  # not a crash to retry
    assert len(progress) <= 2  # the blind baseline may come first (no model); nothing started after the failure
    assert not [e for e in ResultStore(results).ledger() if e["kind"] == "model"]
    assert not list(results.glob("model/.tmp-*")) and not list(results.glob("model/.lock-*"))

    filler.unlink()  # space again: the same command runs through
    again = subprocess.run(_command(grid, results, tracking), capture_output=True, text=True, timeout=900, env=_env())
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trained = Counter(e["key"] for e in ResultStore(results).ledger() if e["kind"] == "model")
    assert len(trained) == 2 and set(trained.values()) == {1}


def test_ctrl_c_marks_the_run_killed_stopped_by_sigint(tmp_path):
    results = tmp_path / "results"
    database = tmp_path / "mlflow.db"
    driver = subprocess.Popen(_command(_grid(tmp_path), results, f"sqlite:///{database}"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(),
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    for line in driver.stdout:  # Ray is up and the units are being scheduled
        if " units in the plan: " in line:
            break
    assert driver.poll() is None, driver.stderr.read()[-3000:]
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err[-3000:]
    client = MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("segleak-smoke")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'invocation'")
    assert parent.info.status == "KILLED" and parent.data.tags["segleak.ended"] == "stopped by SIGINT"
