"""A tracking store that fails mid-run (issue 27 item 8): `mlflow.db` deleted while the background logger
logs finished units gives one line, not MLflow's tracebacks and SQL for every remaining unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a driver: its tracker and background logger, one unit logged, the store deleted, seven more units, the end
DRIVER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from benchmark.failure import one_line
    from ray_jobs.running.background_log import BackgroundLogger
    from ray_jobs.units.base import Unit
    from ray_jobs.recording.store import ResultStore
    from ray_jobs.recording.tracking import Tracker
    from ray_jobs.units.kinds.noop import NoopConfig, NoopMeta

    results = Path(sys.argv[1])
    store = ResultStore(results)
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", "segleak-fault", {}, artifact_root=str(results), locks=store)
    logger = BackgroundLogger(tracker, store.root, store.invocation)
    units = [Unit("noop", f"unit-{i}", NoopConfig("cell", i), (), f"noop {i}", NoopMeta(logs=True)) for i in range(8)]
    logger.log_done(units[0], {})
    assert logger.flush() == []
    os.unlink(results / "mlflow.db")
    for unit in units[1:]:
        logger.log_done(unit, {})
    errors = logger.close()
    try:
        tracker.finish("FINISHED")
        ended = "finished"
    except Exception as exc:
        ended = one_line(exc)
    print(json.dumps({"errors": [[key, str(error)] for key, error in errors], "ended": ended}))
""")


def _drive(results: Path) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(results)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_a_deleted_store_is_one_line_not_a_traceback_per_unit(tmp_path):
    outcome, stderr = _drive(tmp_path)
    assert stderr.strip() == "", stderr[:3000]  # MLflow's loggers print nothing (they printed ~60 lines per call)
    (key, message), = outcome["errors"]  # one error, for the first unit the store failed on
    assert key == "unit-1" and "\n" not in message and len(message) < 800, message
    assert message.startswith("the MLflow store failed logging unit unit-1: MlflowException: (sqlite3.")
    assert "\n" not in outcome["ended"]

