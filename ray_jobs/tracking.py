"""MLflow logging of one benchmark invocation, following DESIGN.md's schema.

Only the driver talks to MLflow: units write their results to the store, and the driver logs each unit as
it finishes (or, for a unit finished by an earlier invocation, from the store). That keeps SQLite to a
single writer (concurrent trials creating or writing one SQLite file race), makes a resumed invocation's
runs complete without recomputing anything, and means workers on a cluster need no route to the server.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from benchmark.errors import SegleakError

CELL_PARAMS = ("dataset", "victim_arch", "shadow_dataset", "shadow_arch", "shadow_overlap", "defense",
               "defense_params", "attack", "representation", "seed", "control")
CELL_METRICS = ("auc", "auc_ci_low", "auc_ci_high", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "balanced_accuracy",
                "precision", "recall", "victim_miou", "n_members", "n_nonmembers")
MODEL_PARAMS = ("dataset", "arch", "role", "train_defense", "overlap", "seed", "n_train")
MODEL_METRICS = ("miou_train", "miou_heldout", "dp_epsilon")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Tracker:
    """One parent run per invocation; nested runs per trained model and per grid cell."""

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
                                     tags={"segleak.kind": "invocation", "segleak.pid": str(os.getpid())})
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, str(v)) for k, v in params.items()])

    def _nested(self, name: str, kind: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": self.parent_id, "segleak.kind": kind, **(tags or {})})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def _metrics(self, run_id: str, values: dict[str, Any], names: tuple[str, ...]) -> None:
        metrics = [Metric(k, float(values[k]), 0, 0) for k in names if _finite(values.get(k))]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def log_model(self, key: str, meta: dict[str, Any], summary: dict[str, Any], checkpoint: str | Path) -> None:
        run_id = self._nested(f"{meta['role']} {meta['arch']} {meta['dataset']} {meta['train_defense']}", "model",
                              {k: meta[k] for k in MODEL_PARAMS},
                              {"segleak.unit": key, "segleak.checkpoint": str(checkpoint),
                               "segleak.placebo": str(meta["placebo"]).lower(), "segleak.setting": meta["setting"]})
        self._metrics(run_id, summary, MODEL_METRICS)
        self.client.set_terminated(run_id)

    def log_cell(self, key: str, meta: dict[str, Any], summary: dict[str, Any], artifacts: list[Path],
                 victim_summary: dict[str, Any]) -> None:
        tags = {"segleak.unit": key, "segleak.setting": meta["setting"], "segleak.adaptive": str(meta["adaptive"]).lower()}
        for metric, reason in (summary.get("missing") or {}).items():
            tags[f"segleak.missing.{metric}"] = reason
        run_id = self._nested(self._cell_name(meta), "attack", {k: meta[k] for k in CELL_PARAMS}, tags)
        values = dict(summary)
        if meta["defense"] == "dp_sgd" and "dp_epsilon" in victim_summary:
            values["dp_epsilon"] = victim_summary["dp_epsilon"]
        self._metrics(run_id, values, CELL_METRICS + ("dp_epsilon",))
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id)

    def log_failure(self, kind: str, key: str, meta: dict[str, Any], error: str) -> None:
        params = {k: meta[k] for k in (CELL_PARAMS if kind == "cell" else MODEL_PARAMS)}
        name = self._cell_name(meta) if kind == "cell" else f"{meta['role']} {meta['arch']} {meta['dataset']}"
        run_id = self._nested(name, "attack" if kind == "cell" else "model", params,
                              {"segleak.unit": key, "segleak.error": error[:4000], "segleak.setting": meta.get("setting", "")})
        self.client.set_terminated(run_id, status="FAILED")

    @staticmethod
    def _cell_name(meta: dict[str, Any]) -> str:
        return f"{meta['attack']}/{meta['representation']} {meta['victim_arch']} {meta['defense_label']} ov={meta['shadow_overlap']}"

    def log_parent(self, metrics: dict[str, float], artifacts_dir: Path | None = None, artifact_path: str | None = None) -> None:
        self._metrics(self.parent_id, metrics, tuple(metrics))
        if artifacts_dir is not None and artifacts_dir.exists():
            self.client.log_artifacts(self.parent_id, str(artifacts_dir), artifact_path)

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.parent_id, status="FAILED" if failed else "FINISHED")

