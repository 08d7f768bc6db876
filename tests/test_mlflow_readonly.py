"""Reading commands (`segleak leaderboard`, `segleak plots`) never change the SQLite file they are pointed at
(issue 27 item 5): a file that is not an MLflow store is refused untouched, and a real store is read-only."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from analysis import schema
from analysis.runs import load_runs
from benchmark.cli import main
from ray_jobs.recording.tracking import Tracker


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.mark.parametrize("command", ["leaderboard", "plots"])
def test_a_foreign_sqlite_file_is_refused_and_left_byte_identical(command, tmp_path, capsys):
    foreign = tmp_path / "notes.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('mine')")
    db.close()
    before = _digest(foreign)
    code = main([command, "--tracking-uri", f"sqlite:///{foreign}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"{foreign} is not an MLflow store" in err, err
    assert _digest(foreign) == before
    with sqlite3.connect(foreign) as db:  # still its one table, not MLflow's
        assert [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path, capsys):
    text = tmp_path / "results.db"
    text.write_text("not a database\n" * 100)
    before = _digest(text)
    assert main(["leaderboard", "--tracking-uri", f"sqlite:///{text}", "--out", str(tmp_path / "out")]) == 2
    assert "is not an MLflow store" in capsys.readouterr().err
    assert _digest(text) == before


def test_reading_a_real_store_leaves_it_unchanged(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "segleak-readonly", {"results": str(tmp_path)}, artifact_root=str(tmp_path))
    tracker.log_run(schema.CELL, "loss_threshold pspnet none", {"dataset": "cityscapes", "defense": "none"},
                    {schema.UNIT_TAG: "cell-ro"}, {"auc": 0.6})
    tracker.finish("FINISHED")
    store = tmp_path / "mlflow.db"
    before = _digest(store)
    runs = load_runs(uri, None)
    assert list(runs.cells["auc"]) == [0.6] and runs.parent_run_id == tracker.parent_id
    assert _digest(store) == before


def test_reading_writes_nothing_into_the_current_folder(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "segleak-readonly-cwd", {}, artifact_root=str(tmp_path)).finish("FINISHED")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_runs(uri, "segleak-readonly-cwd").cells.empty
    assert not list(elsewhere.iterdir())
