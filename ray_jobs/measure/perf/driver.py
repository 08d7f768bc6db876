"""The driver's own cost per unit at scale: plans of 1k-100k no-op units (`ray_jobs.units.kinds.noop`) run on a local
Ray through the real scheduler, store (locks, markers, ledger) and MLflow logging.

What the driver spends is CPU time of its own process (`os.times`: its Python thread and Ray's threads in
it), so the load of other processes barely moves it; wall times are printed for information only. The plan
has the paper grid's shape (ray_jobs.grid.plan): per victim/shadow pair 2 models, 2 releases, 8 fits and 14
cells, the cells reading a fit, the victim's release and its model, models and cells logging an MLflow run
(0.62 runs per unit, as in the paper profile) and carrying as many image ids as the real configs.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_jobs.measure.perf.common import Row, verdict

GOAL_MS = 5.0  # driver CPU per unit at 100k units (issue 17)
# one victim/shadow pair of the paper grid: role -> (units, ids in its config, logs an MLflow run)
BLOCK = {"model": (2, 1500, True), "release": (2, 2400, False), "fit": (8, 0, False), "cell": (14, 1500, True)}
BLOCK_UNITS = sum(n for n, _, _ in BLOCK.values())
RESOURCES = {stage: {"cpu": 1.0, "gpu": 0.0} for stage in ("train", "release", "attack", "cell")}


@dataclass(frozen=True)
class DriverSizes:
    scales: tuple[int, ...]  # plan sizes run through the scheduler, MLflow logging included
    ray_tasks: int  # bare Ray tasks for the submission floor
    mlflow_runs: int  # runs for the per-run logging cost (SQLite and a server)
    drain_limit_s: float  # how long a scale waits for the background logger after its units are done


DRIVER_FULL = DriverSizes((1_000, 10_000, 100_000), 10_000, 200, 60.0)
DRIVER_QUICK = DriverSizes((52, 208), 100, 10, 30.0)


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread (the scheduler's, Ray's core worker's, MLflow's)."""
    t = os.times()
    return t.user + t.system


@contextlib.contextmanager
def measured(out: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's process CPU and wall seconds to `out[name + '_cpu_s']` / `out[name + '_wall_s']`."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    try:
        yield
    finally:
        out[f"{name}_cpu_s"] = out.get(f"{name}_cpu_s", 0.0) + cpu_seconds() - cpu
        out[f"{name}_wall_s"] = out.get(f"{name}_wall_s", 0.0) + time.perf_counter() - wall


def noop_plan(n: int) -> Any:
    """A plan of about `n` no-op units in blocks shaped like one victim/shadow pair of the paper grid."""
    from ray_jobs.units.base import Plan, Unit, unit_key
    from ray_jobs.units.kinds.noop import NoopConfig, NoopMeta

    payloads = {role: [f"train/img_{i:05d}" for i in range(size)] for role, (_, size, _) in BLOCK.items()}
    plan = Plan()

    def add(role: str, index: int, deps: tuple[str, ...]) -> str:
        config = NoopConfig(role, index, payloads[role])
        return plan.add(Unit("noop", unit_key("noop", config), config, deps, f"{role} {index}",
                             NoopMeta(logs=BLOCK[role][2])))

    for block in range(max(1, round(n / BLOCK_UNITS))):
        base = block * BLOCK_UNITS
        victim, shadow = add("model", base, ()), add("model", base + 1, ())
        victim_release, shadow_release = add("release", base + 2, (victim,)), add("release", base + 3, (shadow,))
        fits = [add("fit", base + 4 + i, (shadow_release,)) for i in range(BLOCK["fit"][0])]
        for i in range(BLOCK["cell"][0]):
            add("cell", base + 12 + i, (fits[i % len(fits)], victim_release, victim))
        plan.n_cells_requested += BLOCK["cell"][0]
    return plan


def _tracker(uri: str) -> Any:
    from ray_jobs.recording.tracking import Tracker

    return Tracker(uri, "segleak-bench-driver", {"bench": "driver"})


@contextlib.contextmanager
def tracking_uri(backend: str, root: Path) -> Iterator[str]:
    """A SQLite database in `root`, or a local `mlflow server` on one (analysis.server), for the block."""
    db = f"sqlite:///{root / 'mlflow.db'}"
    if backend == "sqlite":
        yield db
        return
    from analysis.server import TrackingServer

    with TrackingServer(db, artifacts_destination=root / "mlartifacts") as server:
        yield server.url


def run_plan(n: int, root: Path, drain_limit_s: float) -> dict[str, Any]:
    """A plan of ~n no-op units through the real scheduler, store and reporter (its MLflow runs handed to the
    background logger, on SQLite), on the running Ray; then at most `drain_limit_s` for the logger to catch
    up: on this kind of machine it logs a few runs per second, far fewer than no-op units finish."""
    from ray_jobs.recording.store import ResultStore
    from ray_jobs.running.reporting import Reporter
    from ray_jobs.running.scheduler import Scheduler

    out: dict[str, Any] = {}
    with measured(out, "plan"):
        plan = noop_plan(n)
    out["units"] = len(plan.units)
    out["runs"] = sum(1 for u in plan.units.values() if u.meta.logs)
    store = ResultStore(root / "results")
    store.prepare()
    tracker = _tracker(f"sqlite:///{root / 'mlflow.db'}")
    reporter = Reporter(plan, store, tracker, background=True)  # as the runner does
    try:
        with measured(out, "schedule"):
            outcome = Scheduler(plan, store, RESOURCES, retries=0, max_concurrent=None,
                                on_done=reporter.unit_done, on_failed=reporter.unit_failed,
                                stream=io.StringIO(), flush=reporter.flush).run()
        with measured(out, "drain"):
            try:
                reporter.logger.flush(timeout_s=drain_limit_s)
                out["drained"] = True
            except TimeoutError:
                out["drained"] = False
    finally:
        reporter.kill()
    out["failed"] = len(outcome.failed)
    out["driver_cpu_s"] = out["plan_cpu_s"] + out["schedule_cpu_s"]
    out["driver_ms_per_unit"] = 1e3 * out["driver_cpu_s"] / out["units"]
    out["units_per_s"] = out["units"] / out["schedule_wall_s"]
    return out


def _trivial(i: int) -> int:
    return i


def ray_floor(n: int) -> dict[str, Any]:
    """Bare Ray: `n` trivial tasks submitted at once, collected through their futures as the scheduler does:
    what the driver pays per task before any of segleak's own work (a floor under the per-unit figure)."""
    import queue

    import ray

    out: dict[str, Any] = {"tasks": n}
    remote = ray.remote(_trivial)
    ray.get([remote.remote(i) for i in range(min(n, 50))])  # the function exported, workers up
    done: queue.SimpleQueue = queue.SimpleQueue()
    with measured(out, "tasks"):
        for i in range(n):
            remote.options(num_cpus=1, name="segleak-noop").remote(i).future().add_done_callback(done.put)
        for _ in range(n):
            done.get().result()
    out["ms_per_task"] = 1e3 * out["tasks_cpu_s"] / n
    out["tasks_per_s"] = n / out["tasks_wall_s"]
    return out


def mlflow_cost(runs: int, root: Path, backend: str, background: bool) -> dict[str, Any]:
    """Driver CPU per MLflow run of a finished unit (three calls: create, log_batch, terminate), logged in the
    driver or handed to the background logger; the wall time until every run is logged."""
    from ray_jobs.recording.store import ResultStore
    from ray_jobs.running.reporting import Reporter

    plan = noop_plan(BLOCK_UNITS * (1 + runs // BLOCK["cell"][0]))
    warm_up, *cells = [u for u in plan.units.values() if u.config.role == "cell"][:runs + 1]
    out: dict[str, Any] = {"backend": backend, "background": background, "runs": len(cells)}
    with tracking_uri(backend, root) as uri:
        tracker = _tracker(uri)
        reporter = Reporter(plan, ResultStore(root / "results"), tracker, background=background)
        try:
            reporter.unit_done(warm_up, {"role": "cell"})  # the logger started, the first run's lazy imports
            reporter.flush()
            with measured(out, "log"):
                for unit in cells:
                    reporter.unit_done(unit, {"role": "cell"})
                reporter.flush()
        finally:
            reporter.kill()
        tracker.finish(failed=False)
    out["driver_ms_per_run"] = 1e3 * out["log_cpu_s"] / len(cells)
    out["runs_per_s"] = len(cells) / out["log_wall_s"]
    return out


def bench_driver(quick: bool, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Every scale through the scheduler; the bare Ray floor; MLflow per run, in the driver or handed over."""
    import ray

    from ray_jobs.recording.store import ResultStore
    from ray_jobs.running.runner import init_ray
    from ray_jobs.units import UNIT_KINDS

    sizes = DRIVER_QUICK if quick else DRIVER_FULL
    out: dict[str, Any] = {"sizes": sizes.__dict__, "block": {k: list(v) for k, v in BLOCK.items()}, "scales": []}
    UNIT_KINDS.names()  # every kind imported: one-off start-up is not a cost per unit
    init_ray(None, None, ResultStore(workdir))
    try:
        log("driver: warm-up (workers start, modules load) ...")
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            out["warm_up"] = run_plan(BLOCK_UNITS * 2, Path(tmp), sizes.drain_limit_s)
        for n in sizes.scales:
            log(f"driver: {n} no-op units ...")
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                out["scales"].append(run_plan(n, Path(tmp), sizes.drain_limit_s))
        log(f"driver: {sizes.ray_tasks} bare Ray tasks ...")
        out["ray_floor"] = ray_floor(sizes.ray_tasks)
    finally:
        ray.shutdown()
    out["mlflow"] = []
    for backend in ("sqlite",) if quick else ("sqlite", "server"):
        for background in (False, True):
            log(f"driver: {sizes.mlflow_runs} MLflow runs ({backend}, {'handed over' if background else 'in the driver'}) ...")
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                out["mlflow"].append(mlflow_cost(sizes.mlflow_runs, Path(tmp), backend, background))
    first, last = out["scales"][0], out["scales"][-1]
    out["growth"] = last["driver_ms_per_unit"] / first["driver_ms_per_unit"] if first["driver_ms_per_unit"] else None
    return out


def driver_rows(res: dict[str, Any]) -> list[Row]:
    rows = []
    for r in res["scales"]:
        largest = r is res["scales"][-1]
        rows.append(Row(f"driver CPU per unit, {r['units']} no-op units",
                        f"{r['driver_ms_per_unit']:.2f} ms (plan {1e3 * r['plan_cpu_s'] / r['units']:.2f}, "
                        f"run {1e3 * r['schedule_cpu_s'] / r['units']:.2f}); {r['units_per_s']:.0f} units/s",
                        f"< {GOAL_MS:.0f} ms" if largest else "report",
                        verdict(r["driver_ms_per_unit"] < GOAL_MS) if largest else "info"))
    if res["growth"] is not None:
        rows.append(Row(f"CPU per unit at {res['scales'][-1]['units']} vs {res['scales'][0]['units']} units",
                        f"{res['growth']:.2f}x", "<= 1.5x (linear)", verdict(res["growth"] <= 1.5)))
    f = res["ray_floor"]
    rows.append(Row(f"bare Ray task, submitted + collected ({f['tasks']})",
                    f"{f['ms_per_task']:.2f} ms CPU; {f['tasks_per_s']:.0f} tasks/s", "report", "info"))
    for m in res["mlflow"]:
        where = "handed to the logger" if m["background"] else "logged in the driver"
        rows.append(Row(f"MLflow run {where} ({m['backend']})",
                        f"{m['driver_ms_per_run']:.2f} ms driver CPU; {m['runs_per_s']:.1f} runs/s logged", "report",
                        "info"))
    return rows
