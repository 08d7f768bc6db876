"""The real MLflow server on a free loopback port: runs go in through it, the REST API finds them, and
stopping it leaves no process of its group behind."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import mlflow
import pytest

from analysis.server import TrackingServer, port_in_use
from benchmark.errors import SegleakError


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def test_server_logs_serves_and_stops_its_whole_group(tmp_path: Path) -> None:
    server = TrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts_destination=tmp_path / "artifacts")
    previous = mlflow.get_tracking_uri()
    with server:
        assert server.url.startswith("http://127.0.0.1:")
        pgid = os.getpgid(server.process.pid)
        assert pgid == server.process.pid  # its own group, so stopping it cannot miss a child
        mlflow.set_tracking_uri(server.url)
        try:
            experiment_id = mlflow.create_experiment("segleak-server-test")
            with mlflow.start_run(experiment_id=experiment_id, tags={"segleak.kind": "invocation"}) as run:
                mlflow.log_param("profile", "smoke")
                mlflow.log_metric("auc", 0.75)
                (tmp_path / "note.txt").write_text("hello")
                mlflow.log_artifact(str(tmp_path / "note.txt"))
        finally:
            mlflow.set_tracking_uri(previous)
        found = _post(f"{server.url}/api/2.0/mlflow/runs/search",
                      {"experiment_ids": [experiment_id], "max_results": 10})
        assert [r["info"]["run_id"] for r in found["runs"]] == [run.info.run_id]
        assert {m["key"]: m["value"] for m in found["runs"][0]["data"]["metrics"]} == {"auc": 0.75}
        assert list((tmp_path / "artifacts").rglob("note.txt")), "artifacts go to --artifacts-destination"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not port_in_use(int(server.url.rsplit(":", 1)[1]))


def test_server_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = TrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", port=busy.getsockname()[1])
        with pytest.raises(SegleakError, match="in use"):
            server.start()
