"""Runs a plan's units on Ray in dependency order.

The driver holds the DAG: a unit is submitted as a Ray task once every unit it reads is finished, at most
`max_concurrent` at a time. Ray retries a failing task (`retries` from the grid); a unit that still fails
is recorded with its error and only the units downstream of it are skipped, so one bad cell never stops
unrelated ones. Each finished unit prints one line, instead of Ray's log stream.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from ray_jobs.plan import Plan, Unit
from ray_jobs.store import DamagedUnit, ResultStore
from ray_jobs.units import UnitCrashed, UnitRefused, execute

STAGE_OF_KIND = {"model": "train", "release": "release", "attack": "attack", "cell": "cell"}
SKIPPED = "skipped: upstream"
DEFAULT_RESOURCES = {"train": {"cpu": 1, "gpu": 0}, "release": {"cpu": 1, "gpu": 0},
                     "attack": {"cpu": 1, "gpu": 0}, "cell": {"cpu": 1, "gpu": 0}}


@dataclass
class Outcome:
    done: dict[str, dict[str, Any]] = field(default_factory=dict)    # key -> unit summary
    cached: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)             # key -> one-line error
    compute_seconds: float = 0.0


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the task's own exception
    text = str(cause).strip().splitlines()
    last = text[-1] if text else ""
    return (last if isinstance(cause, (UnitRefused, UnitCrashed)) else f"{type(cause).__name__}: {last}")[:500]


class Scheduler:
    def __init__(self, plan: Plan, store: ResultStore, resources: dict[str, dict[str, float]], retries: int,
                 max_concurrent: int | None, on_done: Callable[[Unit, dict[str, Any]], None],
                 on_failed: Callable[[Unit, str], None], stream=sys.stdout) -> None:
        self.plan, self.store, self.retries = plan, store, retries
        self.resources = {stage: {**DEFAULT_RESOURCES[stage], **resources.get(stage, {})} for stage in DEFAULT_RESOURCES}
        self.max_concurrent = max_concurrent or 10**6
        self.on_done, self.on_failed, self.stream = on_done, on_failed, stream
        self._remote = ray.remote(execute)

    def _submit(self, unit: Unit) -> ray.ObjectRef:
        res = self.resources[STAGE_OF_KIND[unit.kind]]
        threads = max(1, int(res["cpu"]))
        return self._remote.options(
            # Ray retries crashed workers and unexpected errors, not a unit refusing its input (it would again)
            num_cpus=res["cpu"], num_gpus=res["gpu"], max_retries=self.retries, retry_exceptions=[UnitCrashed],
            name=f"segleak-{unit.kind}",
        ).remote(unit.kind, unit.key, unit.config, str(self.store.root), threads, self.store.invocation)

    def _print(self, n_finished: int, total: int, mark: str, unit: Unit, detail: str) -> None:
        print(f"[{n_finished:>4}/{total}] {mark} {unit.kind:<7} {unit.label}  {detail}", file=self.stream, flush=True)

    def _damaged(self, exc: DamagedUnit, prefix: str = "") -> None:
        """One line naming a damaged unit's file and why; the unit has been moved aside to be recomputed."""
        where = f"; moved aside to {exc.moved_to}" if exc.moved_to else ""
        print(f"{prefix}damaged {exc.kind} {exc.key}: {exc.reason}{where}; recomputing it", file=self.stream, flush=True)

    def run(self) -> Outcome:
        outcome = Outcome()
        units = self.plan.topological()
        total = len(units)
        for unit in units:
            try:
                if self.store.is_done(unit.kind, unit.key):
                    outcome.done[unit.key] = self.store.read_unit(unit.kind, unit.key)["summary"]
                    outcome.cached.add(unit.key)
                    continue
                reason = self.store.verify(unit.kind, unit.key, deep=False)
                if reason:  # found damaged by the cheap check: set aside now, recomputed below
                    self._damaged(DamagedUnit(unit.kind, unit.key, reason, self.store.set_aside(unit.kind, unit.key)))
            except DamagedUnit as exc:
                self._damaged(exc)
        print(f"{total} units in the plan: {len(outcome.cached)} already finished, {total - len(outcome.cached)} to run",
              file=self.stream, flush=True)
        for unit in units:
            if unit.key in outcome.cached:
                try:
                    self.on_done(unit, outcome.done[unit.key])
                except DamagedUnit as exc:  # reading its files (a cell's scores) found them damaged
                    self._damaged(exc)
                    outcome.cached.discard(unit.key)
                    outcome.done.pop(unit.key)
        waiting = [u for u in units if u.key not in outcome.cached]
        damage_retried: set[str] = set()  # units retried once after an input of theirs was found damaged
        reported = set(outcome.cached)
        in_flight: dict[ray.ObjectRef, Unit] = {}
        finished = len(outcome.cached)
        while waiting or in_flight:
            for unit in list(waiting):
                upstream_failed = [d for d in unit.deps if d in outcome.failed]
                if upstream_failed:
                    waiting.remove(unit)
                    cause = outcome.failed[upstream_failed[0]]
                    error = cause if cause.startswith(SKIPPED) else f"{SKIPPED} unit {upstream_failed[0]} failed ({cause})"
                    outcome.failed[unit.key] = error
                    finished += 1
                    self._print(finished, total, "-", unit, error)
                    self.on_failed(unit, error)
                elif len(in_flight) < self.max_concurrent and all(d in outcome.done for d in unit.deps):
                    waiting.remove(unit)
                    in_flight[self._submit(unit)] = unit
            if not in_flight:
                if waiting:  # cannot happen for a plan built by build_plan; guards against a silent spin
                    raise RuntimeError(f"scheduler stalled: {waiting[0].key} waits on units that never ran")
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                unit = in_flight.pop(ref)
                finished += 1
                try:
                    summary = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a failed unit is reported, not fatal
                    damaged = getattr(exc, "cause", None) or exc
                    if isinstance(damaged, DamagedUnit) and unit.key not in damage_retried and damaged.key in self.plan.units:
                        # an input went bad after it was finished: recompute it, then retry this unit (once)
                        damage_retried.add(unit.key)
                        finished -= 1
                        self._damaged(damaged, prefix=f"[{finished:>4}/{total}] ! {unit.kind:<7} {unit.label}  input ")
                        if damaged.key in outcome.done:
                            outcome.done.pop(damaged.key)
                            outcome.cached.discard(damaged.key)
                            finished -= 1
                        pending = {u.key for u in waiting} | {u.key for u in in_flight.values()}
                        for redo in {damaged.key, unit.key} - pending:
                            waiting.append(self.plan.units[redo])
                        continue
                    error = _one_line(exc)
                    outcome.failed[unit.key] = error
                    refused = isinstance(getattr(exc, "cause", exc), UnitRefused)
                    self._print(finished, total, "x", unit, f"FAILED{'' if refused else f' after {self.retries} retries'}: {error}")
                    self.on_failed(unit, error)
                    continue
                # the unit's own compute time; the time since submission also counts waiting for a free CPU
                seconds = float(self.store.read_unit(unit.kind, unit.key).get("seconds", 0.0))
                outcome.compute_seconds += seconds
                outcome.done[unit.key] = summary
                self._print(finished, total, "+", unit, _brief(unit, summary, seconds))
                if unit.key not in reported:  # a unit recomputed because it was damaged is logged once
                    reported.add(unit.key)
                    self.on_done(unit, summary)
        return outcome


def _brief(unit: Unit, summary: dict[str, Any], seconds: float) -> str:
    if unit.kind == "model":
        text = f"mIoU train {summary.get('miou_train', float('nan')):.3f} / held-out {summary.get('miou_heldout', float('nan')):.3f}"
        if "dp_epsilon" in summary:
            text += f", eps {summary['dp_epsilon']:.2f}"
    elif unit.kind == "cell":
        text = f"AUC {summary['auc']:.3f} [{summary['auc_ci_low']:.3f}, {summary['auc_ci_high']:.3f}]"
    elif unit.kind == "attack":
        text = f"shadow AUC {summary.get('shadow_auc', float('nan')):.3f}"
    else:
        text = f"{summary.get('n_images', '?')} images"
    return f"{text}  ({seconds:.1f} s)"
