"""Runs a plan's units on Ray in dependency order.

The driver holds the DAG: each unit counts the units it still waits for, and a unit is submitted as a Ray
task the moment its count reaches zero, at most `max_concurrent` at a time (else at most `WINDOW`: Ray holds
each queued task's arguments). A finished task announces itself through its future's callback on a queue,
so the driver never rescans what is in flight and its work per unit does not grow with the plan's size.
Ray retries a failing task (`retries` from the grid); a unit that still fails is recorded with its error
and only the units downstream of it are skipped, so one bad cell never stops unrelated ones; a full disk
(DiskFull) is not retried either, and stops the run: nothing new starts, those in flight finish. Each
finished unit prints one line, instead of Ray's log stream, led by the count, the elapsed time and the time
left (benchmark.progress.Tally; on a terminal under a bar with rate and ETA).
"""

from __future__ import annotations

import queue
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from benchmark.failure import DiskFull
from benchmark.progress import Tally
from benchmark.redact import redact
from ray_jobs.recording.store import DamagedUnit, ResultStore
from ray_jobs.units import UNIT_KINDS, UnitCrashed, UnitRefused, execute
from ray_jobs.units.base import Plan, Unit

SKIPPED = "skipped: upstream"
WINDOW = 10_000  # tasks submitted and not finished, without --max-concurrent: enough to keep any cluster busy


@dataclass
class Outcome:
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> unit summary
    cached: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # key -> one-line error
    compute_seconds: float = 0.0


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the task's own exception
    text = str(cause).strip().splitlines()
    last = text[-1] if text else ""
    return redact(last if isinstance(cause, (UnitRefused, UnitCrashed, DiskFull)) else f"{type(cause).__name__}: {last}")[:500]


class Scheduler:
    def __init__(self, plan: Plan, store: ResultStore, resources: dict[str, dict[str, float]], retries: int,
                 max_concurrent: int | None, on_done: Callable[[Unit, dict[str, Any]], None],
                 on_failed: Callable[[Unit, str], None], stream=sys.stdout,
                 flush: Callable[[], list[tuple[str, BaseException]]] | None = None) -> None:
        """`flush`: waits until `on_done` has logged what it was handed (a background logger) and returns
        the (unit key, error) pairs it met; a finished unit found damaged then is recomputed."""
        self.plan, self.store, self.retries = plan, store, retries
        self.resources = resources
        self.max_concurrent = max_concurrent or WINDOW
        self.on_done, self.on_failed, self.stream, self.flush = on_done, on_failed, stream, flush
        self._remote = ray.remote(execute)
        self._kinds = {name: UNIT_KINDS.lookup(name)() for name in {u.kind for u in plan.units.values()}}
        self._options: dict[str, Any] = {}
        self._completed: queue.SimpleQueue = queue.SimpleQueue()
        self._tally: Tally | None = None  # made by run(), once it knows how many units are finished

    def _submit(self, unit: Unit) -> None:
        """Start the unit's task; its future puts (key, future) on `_completed` when it ends."""
        if unit.kind not in self._options:  # one set of options per kind, built once
            res = self.resources[self._kinds[unit.kind].stage]
            self._options[unit.kind] = (self._remote.options(
                # Ray retries crashed workers and unexpected errors, not a unit refusing its input (it would again)
                num_cpus=res["cpu"], num_gpus=res["gpu"], max_retries=self.retries, retry_exceptions=[UnitCrashed],
                name=f"segleak-{unit.kind}"), max(1, int(res["cpu"])))
        remote, threads = self._options[unit.kind]
        ref = remote.remote(unit.kind, unit.key, unit.config_dict, str(self.store.root), threads, self.store.invocation)
        ref.future().add_done_callback(lambda future, key=unit.key: self._completed.put((key, future)))

    def _next_completed(self) -> list[tuple[str, Any]]:
        """Block until a task ends; every (key, future) that has ended by then."""
        items = []
        while not items:
            try:
                items.append(self._completed.get(timeout=1.0))  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue
        while True:
            try:
                items.append(self._completed.get_nowait())
            except queue.Empty:
                return items

    def _print(self, mark: str, unit: Unit, detail: str) -> None:
        self._tally.line(f"{mark} {unit.kind:<7} {unit.label}  {detail}")

    def _damaged(self, exc: DamagedUnit, prefix: str = "") -> None:
        """One line naming a damaged unit's file and why; the unit has been moved aside to be recomputed."""
        where = f"; moved aside to {exc.moved_to}" if exc.moved_to else ""
        print(redact(f"{prefix}damaged {exc.kind} {exc.key}: {exc.reason}{where}; recomputing it"), file=self.stream, flush=True)

    def _cached(self, units: list[Unit], outcome: Outcome) -> None:
        """Finished units are reused; one whose files fail the cheap check is moved aside and recomputed."""
        for unit in units:
            try:
                record = self.store.finished(unit.kind, unit.key)
            except DamagedUnit as exc:  # set aside: recomputed
                self._damaged(exc)
                continue
            if record is not None:
                outcome.done[unit.key] = record["summary"]
                outcome.cached.add(unit.key)

    def run(self) -> Outcome:
        outcome = Outcome()
        units = self.plan.topological()
        self._cached(units, outcome)
        print(f"{len(units)} units in the plan: {len(outcome.cached)} already finished, "
              f"{len(units) - len(outcome.cached)} to run", file=self.stream, flush=True)
        for unit in units:
            if unit.key in outcome.cached:
                try:
                    self.on_done(unit, outcome.done[unit.key])
                except DamagedUnit as exc:  # reading its files (a cell's scores) found them damaged
                    self._damaged(exc)
                    outcome.cached.discard(unit.key)
                    outcome.done.pop(unit.key)
        for key, exc in self.flush() if self.flush and outcome.cached else ():  # only cached units were handed over
            if not isinstance(exc, DamagedUnit):
                raise exc
            self._damaged(exc)
            outcome.cached.discard(key)
            outcome.done.pop(key, None)
        self._tally = Tally(len(self.plan.units), done=len(outcome.cached), stream=self.stream)
        try:
            return self._run(units, outcome)
        finally:
            self._tally.close()

    def _run(self, units: list[Unit], outcome: Outcome) -> Outcome:
        """Schedule every unit not reused, as its inputs finish."""
        waiting: dict[str, int] = {}
        dependents: dict[str, list[str]] = {}
        ready: deque[str] = deque()
        for unit in units:
            if unit.key in outcome.cached:
                continue
            open_deps = [d for d in unit.deps if d not in outcome.cached]
            waiting[unit.key] = len(open_deps)
            for dep in open_deps:
                dependents.setdefault(dep, []).append(unit.key)
            if not open_deps:
                ready.append(unit.key)
        in_flight: dict[str, Unit] = {}
        reported = set(outcome.cached)  # a unit recomputed because it was damaged is logged once
        retried: set[str] = set()  # units retried once after an input of theirs was found damaged
        full: DiskFull | None = None  # once the disk is full, nothing new starts: every unit would fail so
        while (ready and full is None) or in_flight:
            while ready and full is None and len(in_flight) < self.max_concurrent:
                unit = self.plan.units[ready.popleft()]
                in_flight[unit.key] = unit
                self._submit(unit)
            for key, future in self._next_completed():
                unit = in_flight.pop(key)
                try:
                    summary = future.result()
                except Exception as exc:  # noqa: BLE001 - a failed unit is reported, not fatal
                    damaged = getattr(exc, "cause", None) or exc
                    if isinstance(damaged, DamagedUnit) and unit.key not in retried and damaged.key in self.plan.units:
                        # an input went bad after it was finished: recompute it, then retry this unit (once)
                        retried.add(unit.key)
                        self._damaged(damaged, prefix=f"{self._tally.prefix()} ! {unit.kind:<7} {unit.label}  input ")
                        self._requeue(damaged.key, unit.key, outcome, waiting, dependents, ready, in_flight)
                        continue
                    error = _one_line(exc)
                    if isinstance(damaged, DiskFull):  # (the cause) the units in flight finish, then the run ends
                        full = damaged
                        outcome.failed[unit.key] = error
                        self._print("x", unit, f"FAILED: {error}")
                        self.on_failed(unit, error)
                        continue
                    refused = isinstance(getattr(exc, "cause", exc), UnitRefused)
                    self._fail(unit, error, f"FAILED{'' if refused else f' after {self.retries} retries'}: {error}",
                               outcome, dependents)
                    continue
                # the unit's own compute time; the time since submission also counts waiting for a free CPU
                seconds = float(self.store.read_unit(unit.kind, unit.key).get("seconds", 0.0))
                outcome.compute_seconds += seconds
                outcome.done[unit.key] = summary
                self._print("+", unit, f"{self._kinds[unit.kind].brief(summary)}  ({seconds:.1f} s)")
                if unit.key not in reported:
                    reported.add(unit.key)
                    self.on_done(unit, summary)
                for child in dependents.get(unit.key, ()):
                    waiting[child] -= 1
                    if waiting[child] == 0 and child not in outcome.failed:
                        ready.append(child)
        if full is not None:
            raise full
        stalled = [k for k, n in waiting.items() if k not in outcome.done and k not in outcome.failed]
        if stalled:  # cannot happen for a plan built by build_plan; guards against a silent stop
            raise RuntimeError(f"scheduler stalled: {stalled[0]} waits on units that never ran")
        return outcome

    def _requeue(self, damaged: str, unit: str, outcome: Outcome, waiting: dict[str, int],
                 dependents: dict[str, list[str]], ready: deque[str], in_flight: dict) -> None:
        """Run the damaged input again, and `unit` once it is done."""
        pending = set(ready) | {u.key for u in in_flight.values()} | {k for k, n in waiting.items() if n > 0}
        if damaged in outcome.done:
            outcome.done.pop(damaged)
            outcome.cached.discard(damaged)
            self._tally.undo()
        if damaged not in pending:
            waiting[damaged] = 0
            ready.append(damaged)
        waiting[unit] = 1
        dependents.setdefault(damaged, []).append(unit)

    def _fail(self, unit: Unit, error: str, detail: str, outcome: Outcome, dependents: dict[str, list[str]]) -> None:
        """Record a failure and skip everything downstream of it (each skipped unit printed once)."""
        outcome.failed[unit.key] = error
        self._print("x", unit, detail)
        self.on_failed(unit, error)
        todo = deque((child, unit.key) for child in dependents.get(unit.key, ()))
        while todo:
            key, cause = todo.popleft()
            if key in outcome.failed:
                continue
            skipped = f"{SKIPPED} unit {cause} failed ({outcome.failed[cause]})"
            if outcome.failed[cause].startswith(SKIPPED):
                skipped = outcome.failed[cause]
            outcome.failed[key] = skipped
            child = self.plan.units[key]
            self._print("-", child, skipped)
            self.on_failed(child, skipped)
            todo.extend((grandchild, key) for grandchild in dependents.get(key, ()))
