"""`noop` units: no work of their own, yet every step around it is real: the Ray task, the unit's lock, its
marker with checksums, the ledger event, the driver's progress line and MLflow run. `make bench` schedules
them by the hundred thousand to measure what the driver spends per unit (ray_jobs/measure/perf/driver.py); a grid
never plans one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis import schema
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, config_json, write_summary

# what a logged run carries, as many params and metrics as a grid cell's (analysis.schema)
LOGGED_PARAMS = schema.CELL_PARAMS
LOGGED_METRICS = schema.CELL_METRICS


@dataclass(frozen=True)
class NoopConfig:
    role: str  # the real kind whose place it takes in the plan's shape: model, release, fit, cell
    index: int
    ids: list[str] = field(default_factory=list)  # a payload as large as the real kind's (its image ids)


@dataclass(frozen=True)
class NoopMeta:
    logs: bool  # whether the real kind it stands for logs an MLflow run (models and cells do)


@UNIT_KINDS.register_module()
class NoopKind(UnitKind):
    name = "noop"
    stage = "cell"
    config_type = NoopConfig

    def run(self, key: str, config: NoopConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        with store.writing("noop", key, config_json(config)) as out:
            return write_summary(out, {"role": config.role, "n_ids": len(config.ids)})

    def brief(self, summary: dict[str, Any]) -> str:
        return f"{summary.get('role')}"

    def log(self, tracker, unit, summary, store) -> None:
        if unit.meta is not None and unit.meta.logs:
            tracker.log_run("bench-noop", unit.label, params={k: unit.config.role for k in LOGGED_PARAMS},
                            tags={schema.UNIT_TAG: unit.key},
                            metrics={k: 0.5 for k in LOGGED_METRICS})
