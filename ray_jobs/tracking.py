"""MLflow logging of one benchmark invocation, following DESIGN.md's schema (analysis.schema).

Only the driver talks to MLflow: units write their results to the store, and the driver logs each unit as
it finishes (or, for a unit finished by an earlier invocation, from the store). That keeps SQLite to a
single writer (concurrent trials creating or writing one SQLite file race), makes a resumed invocation's
runs complete without recomputing anything, and means workers on a cluster need no route to the server.
Each unit kind decides what it logs (`UnitKind.log`); this module only writes runs.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import schema
from benchmark.errors import SegleakError


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Tracker:
    """One parent run per invocation; nested runs per trained model, per grid cell, per blind baseline."""

    def __init__(self, tracking_uri: str, experiment: str, params: dict[str, Any]) -> None:
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "creating tables" notices
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri)
        self.uri = tracking_uri
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as exc:  # noqa: BLE001 - name the store in one line
            raise SegleakError(f"cannot open MLflow tracking store {tracking_uri}: {type(exc).__name__}: {exc}") from None
        run = self.client.create_run(self.experiment_id, run_name=f"{experiment} @ {socket.gethostname()}",
                                     tags={schema.KIND_TAG: schema.INVOCATION, "segleak.pid": str(os.getpid())})
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, str(v)) for k, v in params.items()])

    @classmethod
    def attach(cls, tracking_uri: str, experiment_id: str, parent_id: str) -> Tracker:
        """The tracker of a running invocation in another process (the background logger): same parent run."""
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        tracker = cls.__new__(cls)
        tracker.client, tracker.uri = MlflowClient(tracking_uri), tracking_uri
        tracker.experiment_id, tracker.parent_id = experiment_id, parent_id
        return tracker

    def log_run(self, kind: str, name: str, params: dict[str, Any], tags: dict[str, str] | None = None,
                metrics: dict[str, Any] | None = None, artifacts: Iterable[Path] = (), status: str = "FINISHED") -> str:
        """A nested run under the invocation: params as text, finite metrics only, then its artifacts."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            schema.PARENT_TAG: self.parent_id, schema.KIND_TAG: kind, **(tags or {})})
        run_id = run.info.run_id
        values = [Metric(k, float(v), 0, 0) for k, v in (metrics or {}).items() if _finite(v)]
        self.client.log_batch(run_id, metrics=values, params=[Param(k, str(v)) for k, v in params.items()])
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=status)
        return run_id

    def log_parent(self, metrics: dict[str, float], artifacts_dir: Path | None = None, artifact_path: str | None = None) -> None:
        values = [Metric(k, float(v), 0, 0) for k, v in metrics.items() if _finite(v)]
        if values:
            self.client.log_batch(self.parent_id, metrics=values)
        if artifacts_dir is not None and artifacts_dir.exists():
            self.client.log_artifacts(self.parent_id, str(artifacts_dir), artifact_path)

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.parent_id, status="FAILED" if failed else "FINISHED")
