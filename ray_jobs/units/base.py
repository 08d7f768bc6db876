"""What a kind of work unit is, and the Ray task entry point that runs one unit.

A unit is a pure function of its typed config: it reads its inputs from the store by key
(`ResultStore.local_dir`: a download on a bucket) and writes its outputs through `ResultStore.writing`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from benchmark.errors import SegleakError
from benchmark.failure import DiskFull, disk_full_at
from benchmark.registry import ComponentRegistry
from ray_jobs.grid_file import import_worker_components
from ray_jobs.store import DamagedUnit, ResultStore

if TYPE_CHECKING:
    from ray_jobs.plan import Unit
    from ray_jobs.tracking import Tracker

UNIT_KINDS = ComponentRegistry("unit kind", scope="segleak", locations=[
    "ray_jobs.units.model", "ray_jobs.units.release", "ray_jobs.units.fit", "ray_jobs.units.cell",
    "ray_jobs.units.blind", "ray_jobs.units.protocol", "ray_jobs.units.audit", "ray_jobs.units.noop",
])


class UnitKind:
    """One kind of unit: its config type, its resource stage, how it runs, reports and logs."""

    name: ClassVar[str]
    stage: ClassVar[str]  # the grid's `resources` key it runs with
    config_type: ClassVar[type]
    version: ClassVar[int] = 1  # bump when its outputs would change: its units (and those reading them) rerun
    # config field -> the registry of the component it names: that component's version enters the key
    shaped_by: ClassVar[dict[str, ComponentRegistry]] = {}

    def config(self, values: dict[str, Any]) -> Any:
        """The typed config from its JSON form (as shipped to a Ray worker and stored in the marker)."""
        names = {f.name for f in fields(self.config_type)}
        return self.config_type(**{k: v for k, v in values.items() if k in names})

    def run(self, key: str, config: Any, store: ResultStore, num_threads: int) -> dict[str, Any]:
        raise NotImplementedError

    def images(self, config: Any) -> list[tuple[str, dict[str, Any], list[str]]]:
        """The dataset images the unit reads, as (root, adapter spec, ids): the driver checks their files
        before anything trains (ray_jobs.preflight.check_images)."""
        return []

    def brief(self, summary: dict[str, Any]) -> str:
        """The unit's figures on its progress line."""
        return ""

    def log(self, tracker: Tracker, unit: Unit, summary: dict[str, Any], store: ResultStore) -> None:
        """MLflow logging of a finished unit (most kinds have no run of their own)."""

    def log_failure(self, tracker: Tracker, unit: Unit, error: str) -> None:
        """MLflow logging of a failed unit."""


def config_json(config: Any) -> dict[str, Any]:
    """A config's fields as a dict, without copying them: `dataclasses.asdict` deep-copies every list, which
    for a cell's 1500 image ids costs the driver 1.2 ms per call (plan keys, Ray arguments; 4 us here).
    Fields hold JSON values; a nested dataclass still becomes a dict, as with `asdict`."""
    return {f.name: asdict(v) if is_dataclass(v) and not isinstance(v, type) else v
            for f in fields(config) for v in (getattr(config, f.name),)}


def code_versions(kind: str, config: Any) -> dict[str, int]:
    """The versions of the code that shapes a unit (its kind, and each component its config names), where
    bumped past the baseline 1: a unit key hashes them, so a result never outlives the code that made it, while
    the keys of units whose code is at its first version stay those of existing results stores. Units reading
    another unit's key change with it, so a changed attack recomputes its fits and the cells reading them."""
    unit_kind = UNIT_KINDS.lookup(kind)
    versions = {f"unit kind {kind}": unit_kind.version}
    for field_name, registry in unit_kind.shaped_by.items():
        spec = getattr(config, field_name, None)
        if spec:
            name = spec if isinstance(spec, str) else spec.get("name", spec.get("type"))
            versions[f"{registry.name} {name}"] = registry.version(spec)
    return {name: version for name, version in versions.items() if version != 1}


def write_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=float))
    return summary


class UnitRefused(Exception):
    """A unit that failed on its input (a SegleakError): deterministic, so Ray must not retry it."""


class UnitCrashed(Exception):
    """Any other error in a unit: worth a retry (a flaky node, a transient I/O error)."""


def execute(kind: str, key: str, config: dict[str, Any], store_root: str, num_threads: int,
            invocation: str | None = None) -> dict[str, Any]:
    """Entry point of a Ray task: one unit, skipped if an earlier attempt already finished it. The unit's
    lock is held while computing it: a unit another invocation is computing is waited for, not redone.
    An input found damaged raises DamagedUnit as is (not a crash to retry): the scheduler recomputes the
    input, then this unit; a full disk raises DiskFull as is: the scheduler starts nothing more."""
    torch.set_num_threads(max(1, num_threads))
    import_worker_components()
    store = ResultStore(store_root, invocation=invocation)
    unit_kind = UNIT_KINDS.lookup(kind)()
    try:
        with store.claim(kind, key) as mine:  # its lock file, too, may find the disk full
            if not mine:
                return store.read_unit(kind, key)["summary"]
            return unit_kind.run(key, unit_kind.config(config), store, num_threads)
    except (DamagedUnit, DiskFull):  # not a crash to retry: recompute the input / end the run
        raise
    except SegleakError as exc:
        raise UnitRefused(str(exc)) from None
    except Exception as exc:
        full = disk_full_at(exc, store.local_root)  # an ENOSPC outside the unit's own files (its lock)
        if full is not None:
            raise full from exc
        raise UnitCrashed(f"{type(exc).__name__}: {exc}") from exc
