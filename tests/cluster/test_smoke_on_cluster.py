"""The smoke profile end to end through `--address` on a two-node Ray cluster, logging to MLflow on PostgreSQL.

This is the cluster path in miniature: the CLI's driver connects to an existing cluster (not a local
instance), workers on both nodes log over HTTP to a tracking server whose backend store is PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.server import TrackingServer

from .conftest import RayCluster

SMOKE_TIMEOUT_S = 1800
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_profile_on_two_node_cluster(
    ray_two_node_cluster: RayCluster, mlflow_pg_server: TrackingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`segleak benchmark --profile smoke --address ...` succeeds and every grid cell has an attack run with AUC."""
    import ray
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)  # the address must come from --address
    cmd = [
        sys.executable, "-m", "benchmark.cli", "benchmark", "--profile", "smoke",
        "--address", ray_two_node_cluster.address, "--results", str(results),
        "--tracking-uri", mlflow_pg_server.url, "--max-concurrent", "2",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, f"segleak benchmark failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    client = MlflowClient(mlflow_pg_server.url)
    experiment = client.get_experiment_by_name("segleak-smoke")
    assert experiment is not None, [e.name for e in client.search_experiments()]
    attack_runs = client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'attack'", max_results=1000)
    model_runs = client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'model'", max_results=1000)
    assert attack_runs and model_runs
    for run in attack_runs:
        assert 0.0 <= run.data.metrics["auc"] <= 1.0, run.info.run_id
        assert {"dataset", "arch", "defense", "attack", "overlap"} <= run.data.params.keys()  # schema.LOGGED_AS

    # The driver joined the existing cluster as a job (a local instance would not show up here).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(address=ray_two_node_cluster.address, log_to_driver=False)
    try:
        from ray._private.state import jobs

        assert any("benchmark" in job["Entrypoint"] and job["IsDead"] for job in jobs()), jobs()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        ray.shutdown()
