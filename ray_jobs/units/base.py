"""What a kind of work unit is, and the Ray task entry point that runs one unit.

A unit is a pure function of its typed config: it reads its inputs from the store by key
(`ResultStore.local_dir`: a download on a bucket) and writes its outputs through `ResultStore.writing`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from benchmark.errors import SegleakError
from benchmark.failure import DiskFull, raise_if_disk_full
from benchmark.registry import ComponentRegistry
from ray_jobs.grid.file import import_worker_components
from ray_jobs.recording.sealing import DamagedUnit
from ray_jobs.recording.store import ResultStore

if TYPE_CHECKING:
    from ray_jobs.recording.tracking import Tracker

UNIT_KINDS = ComponentRegistry("unit kind", scope="segleak", locations=["ray_jobs.units.kinds"])
PLAN_VERSION = 2  # enters every unit key: bumping it recomputes everything


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
        before anything trains (ray_jobs.running.preflight.check_images)."""
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


def unit_key(kind: str, config: Any) -> str:
    """A short, stable content hash: same kind, resolved config and code versions -> same key, on any machine."""
    typed = hasattr(config, "__dataclass_fields__")
    content: dict[str, Any] = {"kind": kind, "version": PLAN_VERSION, "config": config_json(config) if typed else config}
    if typed and (versions := code_versions(kind, config)):
        content["code"] = versions
    blob = json.dumps(content, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass
class Unit:
    """One planned piece of work: its kind, its key (a hash of its typed config) and the keys it reads."""

    kind: str
    key: str
    config: Any  # the kind's typed config (a frozen dataclass)
    deps: tuple[str, ...]
    label: str
    meta: Any = None  # the kind's typed display metadata, kept out of the key

    @classmethod
    def of(cls, kind: str, config: Any, deps: tuple[str, ...], label: str, meta: Any = None) -> Unit:
        """A unit keyed by its config."""
        return cls(kind, unit_key(kind, config), config, deps, label, meta)

    @property
    def config_dict(self) -> dict[str, Any]:
        return config_json(self.config)


@dataclass
class Plan:
    """The unique units of a grid, by key (two cells needing the same model share its unit)."""

    units: dict[str, Unit] = field(default_factory=dict)
    n_cells_requested: int = 0
    notes: list[str] = field(default_factory=list)  # what the plan could not do as designed, said before it runs

    def add(self, unit: Unit) -> str:
        self.units.setdefault(unit.key, unit)
        return unit.key

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def of_kind(self, kind: str) -> list[Unit]:
        return [u for u in self.units.values() if u.kind == kind]

    def counts(self) -> dict[str, int]:
        """Unique units per kind next to the naive count (every cell trains its own victim and shadow)."""
        counts: dict[str, int] = {}
        for unit in self.units.values():
            counts[unit.kind] = counts.get(unit.kind, 0) + 1
        counts["naive_models"] = 2 * self.n_cells_requested
        return counts

    def topological(self) -> list[Unit]:
        """Units ordered so that every unit comes after the units it reads."""
        order: list[Unit] = []
        state: dict[str, int] = {}
        for root in sorted(self.units):
            stack = [(root, iter(self.units[root].deps))]
            if state.get(root):
                continue
            state[root] = 1
            while stack:
                key, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    stack.pop()
                    state[key] = 2
                    order.append(self.units[key])
                elif not state.get(dep):
                    state[dep] = 1
                    stack.append((dep, iter(self.units[dep].deps)))
        return order


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
            versions[f"{registry.name} {registry.name_of(spec)}"] = registry.version(spec)
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
        raise_if_disk_full(exc, store.local_root, store.local_root)  # an ENOSPC outside the unit's files (its lock)
        raise UnitCrashed(f"{type(exc).__name__}: {exc}") from exc
