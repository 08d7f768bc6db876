"""The services a cluster run depends on, started for real: MLflow over HTTP on PostgreSQL, and a two-node Ray."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from analysis.server import TrackingServer

from .conftest import RayCluster


def _rest(server: TrackingServer, path: str, payload: dict | None = None) -> dict:
    """One MLflow REST call (GET with a query string, or POST with a JSON body), decoded."""
    if payload is None:
        request = urllib.request.Request(f"{server.url}{path}")
    else:
        request = urllib.request.Request(
            f"{server.url}{path}", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def test_mlflow_postgres_server_round_trip(mlflow_pg_server: TrackingServer, postgres_server: str, tmp_path: Path) -> None:
    """A run logged over HTTP (as a Ray worker would) is stored in PostgreSQL and readable back by REST."""
    import mlflow
    import psycopg2

    mlflow.set_tracking_uri(mlflow_pg_server.url)
    experiment_id = mlflow.set_experiment("segleak-cluster-test").experiment_id
    (tmp_path / "scores.csv").write_text("image_id,membership,score\na,1,0.9\nb,0,0.2\n")
    with mlflow.start_run(run_name="attack-cell") as run:
        mlflow.set_tag("segleak.kind", "attack")
        mlflow.log_params({"dataset": "cityscapes", "attack": "loss_threshold"})
        mlflow.log_metric("auc", 0.75)
        mlflow.log_artifact(str(tmp_path / "scores.csv"))
    run_id = run.info.run_id

    found = _rest(
        mlflow_pg_server,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment_id], "filter": "tags.`segleak.kind` = 'attack'", "max_results": 10},
    )["runs"]
    assert [r["info"]["run_id"] for r in found] == [run_id]
    data = found[0]["data"]
    assert {p["key"]: p["value"] for p in data["params"]} == {"dataset": "cityscapes", "attack": "loss_threshold"}
    assert {m["key"]: m["value"] for m in data["metrics"]} == {"auc": 0.75}

    listed = _rest(mlflow_pg_server, "/api/2.0/mlflow/artifacts/list?" + urllib.parse.urlencode({"run_id": run_id}))
    assert [f["path"] for f in listed["files"]] == ["scores.csv"]
    query = urllib.parse.urlencode({"path": "scores.csv", "run_uuid": run_id})
    with urllib.request.urlopen(f"{mlflow_pg_server.url}/get-artifact?{query}", timeout=30) as resp:
        assert resp.read().decode().startswith("image_id,membership,score")
    assert list(mlflow_pg_server.artifacts_destination.rglob("scores.csv")), "artifact was not proxied into the artifact store"

    with psycopg2.connect(postgres_server) as conn, conn.cursor() as cur:
        cur.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'auc'", (run_id,))
        assert cur.fetchall() == [(0.75,)]


def test_two_node_cluster_runs_tasks_on_both_nodes(ray_two_node_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """`RAY_ADDRESS` reaches the cluster, both nodes are alive, and 1-CPU tasks spread over both nodes."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_ADDRESS", ray_two_node_cluster.address)
    ray.init(log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == ray_two_node_cluster.num_nodes == 2
        assert ray.cluster_resources().get("GPU", 0) == 0

        @ray.remote(num_cpus=1)
        def node_of_task() -> str:
            time.sleep(1.0)  # both tasks must be in flight at once, so each needs its own node's only CPU
            return ray.get_runtime_context().get_node_id()

        nodes = ray.get([node_of_task.remote() for _ in range(2)], timeout=120)
        assert set(nodes) == {n["NodeID"] for n in alive}
    finally:
        ray.shutdown()
