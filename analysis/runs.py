"""Reads one invocation's runs out of MLflow: the only module that knows how the grid logs (analysis/schema.py).

Everything downstream works on two plain DataFrames (cells, models) with typed columns, so the table and
plot code never touches MLflow and can be tested on frames alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import pandas as pd
from mlflow.entities import Experiment
from mlflow.tracking import MlflowClient

from analysis.schema import (
    AUDIT, AUDIT_KIND_METRICS, AUDIT_METRICS, AUDIT_PARAMS, BLIND, BLIND_METRICS, BLIND_PARAMS, CELL, CELL_METRICS,
    CELL_PARAMS, DATA_SOURCES_PARAM, ERROR_TAG, INVOCATION, KIND_TAG, LOGGED_AS,
    MISSING_PREFIX, MODEL, MODEL_METRICS, MODEL_PARAMS, PARENT_TAG, PLACEBO_TAG, REFUSED_TAG, SETTING_TAG, TUNED_TAG,
    member_tag,
)
from benchmark.errors import SegleakError

_SYMBOLS = {"sigma": "σ", "epsilon": "ε", "target_epsilon": "ε"}
# tables every MLflow SQLite store has (MLflow's own check lists all of its ORM's tables)
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs", "params", "metrics", "tags"})


def reading_client(tracking_uri: str) -> MlflowClient:
    """A client that cannot change the store: a SQLite file is checked to be an MLflow store first, opened
    read-only (MLflow would otherwise create its 66 tables in any SQLite file, or in a missing one)."""
    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri)  # a server or a database server: nothing migrates an existing store
    path = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()
    if not path.is_file():
        raise SegleakError(f"no MLflow store at {tracking_uri}: run `segleak benchmark` first (or pass --tracking-uri)")
    ro_uri = f"file:{quote(str(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(ro_uri, uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise SegleakError(f"{path} is not an MLflow store ({exc}); it was left as it was") from None
    if not MLFLOW_TABLES <= tables:
        raise SegleakError(f"{path} is not an MLflow store (it lacks the tables {', '.join(sorted(MLFLOW_TABLES - tables))}); "
                           "it was left as it was")
    # the driver's own scheme: with `sqlite:///`, MLflow would make the folders of "file:/..." in the current folder
    return MlflowClient(f"sqlite+pysqlite:///{ro_uri}&uri=true")


@dataclass(frozen=True)
class GridRuns:
    """The runs of one invocation: attack cells and trained models, one row per MLflow run."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    cells: pd.DataFrame
    models: pd.DataFrame
    blind: pd.DataFrame
    audits: pd.DataFrame = field(default_factory=pd.DataFrame)
    sources: dict[str, str] = field(default_factory=dict)  # dataset name -> "synthetic" | "real"


def _kind_filter(kind: str) -> str:
    return f"tags.`{KIND_TAG}` = '{kind}'"


def _resolve_experiment(client: MlflowClient, tracking_uri: str, name: str | None) -> Experiment:
    """The named experiment, or the newest one holding a segleak invocation."""
    if name is None:
        return newest_experiment(client, tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise SegleakError(f"no MLflow experiment named {name!r} in {tracking_uri}")
    return experiment


def newest_experiment(client: MlflowClient, tracking_uri: str) -> Experiment:
    """The newest experiment holding a segleak invocation (what the reading commands and the UI default to)."""
    for experiment in client.search_experiments(order_by=["creation_time DESC"]):
        if client.search_runs([experiment.experiment_id], _kind_filter(INVOCATION), max_results=1):
            return experiment
    raise SegleakError(f"no segleak benchmark runs in {tracking_uri}: run `segleak benchmark` first")


def _latest_invocation(client: MlflowClient, tracking_uri: str, experiment: Experiment) -> str:
    runs = client.search_runs(
        [experiment.experiment_id], _kind_filter(INVOCATION), max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not runs:
        raise SegleakError(f"experiment {experiment.name!r} in {tracking_uri} has no segleak invocation run")
    return runs[0].info.run_id


def _runs_frame(client: MlflowClient, experiment_id: str) -> pd.DataFrame:
    """Every run of the experiment, flattened like `mlflow.search_runs` (params.*, metrics.*, tags.*)."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=5000, page_token=token)
        for run in page:
            row: dict[str, object] = {
                "run_id": run.info.run_id, "status": run.info.status, "artifact_uri": run.info.artifact_uri,
            }
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        token = page.token
        if not token:
            return pd.DataFrame(rows, columns=None if rows else ["run_id", "status", "artifact_uri"])


def _descendants(frame: pd.DataFrame, root: str) -> pd.DataFrame:
    """Runs nested under `root` at any depth (the grid may nest cells under model runs), and the runs `root`
    reused from other invocations (its member tag)."""
    children: dict[str, list[str]] = {}
    for run_id, parent in zip(frame["run_id"], _column(frame, f"tags.{PARENT_TAG}")):
        if isinstance(parent, str):
            children.setdefault(parent, []).append(run_id)
    # runs logged by an earlier or a concurrent invocation and reused by this one carry its member tag
    keep = set(frame["run_id"][_column(frame, f"tags.{member_tag(root)}").eq("true")])
    todo = [root, *keep]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in keep:
                keep.add(child)
                todo.append(child)
    return frame[frame["run_id"].isin(keep)]


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)


def defense_label(defense: str, params: dict[str, object]) -> str:
    """'gaussian σ=0.1' style column name; a defense without parameters keeps its bare name."""
    if not params:
        return defense
    parts = []
    for key in sorted(params):
        value = params[key]
        text = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        parts.append(f"{_SYMBOLS.get(key, key)}={text}")
    return f"{defense} {', '.join(parts)}"


def defense_sort_key(defense: str, params: dict[str, object]) -> tuple:
    """Registered defenses in their declared order (output side first), unknown ones after; parameter values
    ascending within one."""
    from benchmark.registry import DEFENSES

    rank = DEFENSES.lookup(defense).order if defense in DEFENSES.names() else 10**6
    values = tuple((0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v)) for _, v in sorted(params.items()))
    return rank, defense, values


def parse_params(text: object) -> dict[str, object]:
    """defense_params is logged as a JSON string; an empty or absent value means no parameters."""
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"params": text}
    return value if isinstance(value, dict) else {"params": value}


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _typed(frame: pd.DataFrame, params: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Run id, status, the named params (text) and metrics (floats, NaN where absent) of each run."""
    out = pd.DataFrame({"run_id": frame["run_id"], "status": frame["status"]})
    for name in params:
        logged = _column(frame, f"params.{LOGGED_AS.get(name, name)}")
        out[name] = logged.where(logged.notna(), _column(frame, f"params.{name}"))  # runs logged before LOGGED_AS
    for name in metrics:
        out[name] = pd.to_numeric(_column(frame, f"metrics.{name}"), errors="coerce")
    return out


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    out = _typed(frame, CELL_PARAMS, CELL_METRICS)
    out["control"] = out["control"].fillna("none")
    out["shadow_overlap"] = out["shadow_overlap"].map(_float)
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce")
    out["placebo_model"] = pd.to_numeric(out["placebo_model"], errors="coerce").fillna(0).astype(int)
    same = out["shadow_dataset"] == out["dataset"]
    out["setting"] = _column(frame, f"tags.{SETTING_TAG}").fillna(same.map({True: "dependent", False: "independent"}))
    out["error"] = _column(frame, f"tags.{ERROR_TAG}")
    out["refused"] = _column(frame, f"tags.{REFUSED_TAG}")
    out["tuned"] = _column(frame, f"tags.{TUNED_TAG}")
    missing_cols = [c for c in frame.columns if c.startswith(f"tags.{MISSING_PREFIX}")]
    out["missing"] = [
        "; ".join(f"{c.removeprefix('tags.' + MISSING_PREFIX)}: {row[c]}" for c in missing_cols if isinstance(row[c], str))
        for _, row in frame.iterrows()
    ]
    params = out["defense_params"].map(parse_params)
    out["defense_label"] = [defense_label(d, p) for d, p in zip(out["defense"], params)]
    out["defense_key"] = [defense_sort_key(d, p) for d, p in zip(out["defense"], params)]
    fallback = [a if r in (None, "statistic") or not isinstance(r, str) else f"{a}/{r}"
                for a, r in zip(out["attack"], out["representation"])]
    out["attack_label"] = out["attack_label"].where(out["attack_label"].notna(), pd.Series(fallback, index=out.index))
    out["artifact_uri"] = frame["artifact_uri"]
    return out.reset_index(drop=True)


def _models(frame: pd.DataFrame) -> pd.DataFrame:
    out = _typed(frame, MODEL_PARAMS, MODEL_METRICS)
    # which split trained the model: the dependent or independent setting, and whether it is a placebo victim
    setting = _column(frame, f"tags.{SETTING_TAG}").fillna("—")
    out["split"] = setting.where(_column(frame, f"tags.{PLACEBO_TAG}").ne("true"), setting + ", placebo")
    return out.reset_index(drop=True)


def _blind(frame: pd.DataFrame) -> pd.DataFrame:
    out = _typed(frame, BLIND_PARAMS, BLIND_METRICS)
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce")  # a param (text); the report formats it as a number
    out["flagged"] = _column(frame, "tags.segleak.flagged").eq("true")
    return out.reset_index(drop=True)


def _audits(frame: pd.DataFrame) -> pd.DataFrame:
    from benchmark.audit.canaries import KINDS

    out = _typed(frame, AUDIT_PARAMS, [*AUDIT_METRICS, *(f"{k}_{m}" for k in KINDS for m in AUDIT_KIND_METRICS)])
    out["error"] = _column(frame, f"tags.{ERROR_TAG}")
    return out.reset_index(drop=True)


def load_runs(tracking_uri: str, experiment: str | None, parent_run_id: str | None = None) -> GridRuns:
    """The cells and models of one invocation: `parent_run_id`, else the experiment's latest one."""
    client = reading_client(tracking_uri)
    resolved = _resolve_experiment(client, tracking_uri, experiment)
    parent = parent_run_id or _latest_invocation(client, tracking_uri, resolved)
    frame = _descendants(_runs_frame(client, resolved.experiment_id), parent)
    kind = _column(frame, f"tags.{KIND_TAG}")
    return GridRuns(
        tracking_uri=tracking_uri,
        experiment=resolved.name,
        parent_run_id=parent,
        cells=_cells(frame[kind == CELL]),
        models=_models(frame[kind == MODEL]),
        blind=_blind(frame[kind == BLIND]),
        audits=_audits(frame[kind == AUDIT]),
        sources=json.loads(client.get_run(parent).data.params.get(DATA_SOURCES_PARAM, "{}")),
    )


def download_scores(tracking_uri: str, run_id: str, dst: Path) -> pd.DataFrame | None:
    """A cell's scores.csv (image_id, is_member, score), or None when the run has none."""
    client = reading_client(tracking_uri)
    if not any(f.path == "scores.csv" for f in client.list_artifacts(run_id)):
        return None
    dst.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):  # one bar per file is noise
        local = client.download_artifacts(run_id, "scores.csv", str(dst))
    return pd.read_csv(local)
