"""`segleak benchmark`: load the grid, prepare data and membership splits, plan, run on Ray, log to MLflow,
and write the leaderboard and plots.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from analysis.schema import DATA_SOURCES_PARAM
from benchmark.errors import SegleakError
from benchmark.failure import one_line
from benchmark.paths import default_tracking_uri
from benchmark.redact import redact
from benchmark.signals import rearm
from ray_jobs.grid.file import IMPORTS_ENV
from ray_jobs.grid.plan import build_plan
from ray_jobs.grid.sources import data_sources, make_manifests, prepare_sources
from ray_jobs.grid.spec import load_grid
from ray_jobs.recording.store import CREDENTIAL_ENV, ResultStore
from ray_jobs.running.dry_run import DryRunStore, dry_run_store, print_writes
from ray_jobs.running.preflight import check_images, check_resources, check_tracking, cluster_capacity, local_capacity
from ray_jobs.running.ray_session import current_session, mark_session, remove_session, sweep_sessions
from ray_jobs.running.reporting import Summary
from ray_jobs.units.base import Plan


def init_ray(address: str | None, max_concurrent: int | None, store: ResultStore) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # workers allocate large fresh tensors (posterior maps, attack inputs): transparent huge pages in torch's
    # CPU allocator cut their first-touch page faults (the concatenation input builds ~2.5x faster)
    env_vars = {"THP_MEM_ALLOC_ENABLE": "1"}
    if IMPORTS_ENV in os.environ:  # the grid's custom component modules, imported by every worker
        env_vars[IMPORTS_ENV] = os.environ[IMPORTS_ENV]
    if store.remote:  # workers on other nodes do not see the driver's environment: hand them the bucket's
        env_vars.update({k: os.environ[k] for k in CREDENTIAL_ENV if k in os.environ})
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                  configure_logging=True, runtime_env={"env_vars": env_vars})
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max_concurrent or os.cpu_count(), **kwargs)


def print_plan(plan: Plan, store: ResultStore, stream=sys.stdout) -> None:
    """Units per kind, how many are already finished in the store, and the naive grid's model count."""
    counts = plan.counts()
    finished: dict[str, int] = {}
    for unit in plan.units.values():
        finished[unit.kind] = finished.get(unit.kind, 0) + store.is_done(unit.kind, unit.key)
    parts = [f"{n} {kind} ({finished.get(kind, 0)} finished)" for kind, n in counts.items() if kind != "naive_models"]
    print(f"plan: {', '.join(parts)}; {plan.n_cells_requested} grid cells; a naive grid would train "
          f"{counts['naive_models']} models", file=stream, flush=True)
    for text in plan.notes:
        print(f"note: {text}", file=stream, flush=True)


def run_benchmark(profile: str | None = None, grid_file: str | None = None, results: str = "results",
                  tracking_uri: str | None = None, address: str | None = None, max_concurrent: int | None = None,
                  dry_run: bool = False, gpu_check: str | None = None, stream=sys.stdout) -> Summary:
    """Run a grid end to end; finished units from earlier invocations are reused, never recomputed.

    Refuses in one line, before it writes anything or starts Ray, a bad grid, a tracking store that does not
    answer, a resource request no node can satisfy and images that do not decode (ray_jobs.running.preflight).
    `dry_run`: validate the grid and the data, print the plan (units per kind, the naive count, what is
    already finished) and its estimated GPU-hours (ray_jobs.grid.estimate: from `gpu_check`, a `make gpu-check`
    JSON, else <results>/gpu-check.json, else the committed H200 measurement), and stop before Ray starts
    or MLflow is written to, and without writing into `results` (ray_jobs.running.dry_run). A real run prints the
    estimate when `gpu_check` is given."""
    started = time.time()
    grid = load_grid(profile, grid_file)
    if dry_run:
        with dry_run_store(results) as dry:
            plan, _ = _prepare(grid, dry, tracking_uri, address, max_concurrent, gpu_check, stream)
            print_writes(dry, stream)
            return Summary(plan.counts(), cached=sum(dry.is_done(u.kind, u.key) for u in plan.units.values()))
    store = ResultStore(results)
    plan, tracking_uri = _prepare(grid, store, tracking_uri, address, max_concurrent, gpu_check, stream)

    from ray_jobs.recording.tracking import Tracker

    tracker = Tracker(tracking_uri, grid.name, {"profile": profile or ("custom" if grid_file else "default"),
                                                "grid_name": grid.name, "grid_source": grid.source,
                                                "results": store.root, "ray_address": address or "local",
                                                DATA_SOURCES_PARAM: data_sources(grid)},
                      artifact_root=store.root, invocation=store.invocation, locks=store)
    try:
        summary = _run(plan, grid, store, tracker, address, max_concurrent, started, stream)
    except KeyboardInterrupt as stop:  # Ctrl-C, and SIGTERM/SIGHUP (benchmark.signals.Stopped)
        _end(tracker, "KILLED", f"stopped by {str(stop) or 'SIGINT'}")  # Ctrl-C's KeyboardInterrupt has no text
        raise
    except BaseException as exc:
        _end(tracker, "FAILED", one_line(exc))
        raise
    tracker.finish("FAILED" if summary.failed else "FINISHED")
    return summary


def _prepare(grid, store: ResultStore, tracking_uri: str | None, address: str | None, max_concurrent: int | None,
             gpu_check: str | None, stream) -> tuple[Plan, str]:
    """The checks before anything runs, the data and the splits, and the plan printed; a DryRunStore makes
    it a dry run. Returns the plan and the tracking URI."""
    dry_run = isinstance(store, DryRunStore)
    tracking_uri = tracking_uri or default_tracking_uri(store.root)  # refuses a bucket: no SQLite file there
    check_tracking(tracking_uri)
    store.prepare()
    print(f"segleak: grid {grid.name!r} from {grid.source}; results in {redact(store.root)}; "
          f"MLflow at {redact(tracking_uri)}", file=stream)
    sources = prepare_sources(grid, store)
    plan = build_plan(grid, sources, make_manifests(grid, sources, store, stream))
    print_plan(plan, store, stream)
    if dry_run or gpu_check:
        from ray_jobs.grid.estimate import print_estimate

        print_estimate(plan, grid, gpu_check, str(store.root), stream)
    if not address:
        try:
            check_resources(plan, grid.resources, local_capacity(max_concurrent), "the local Ray instance")
        except SegleakError as refusal:  # a dry run plans a cluster profile from a laptop: say so, go on
            if not dry_run:
                raise
            print(f"segleak: note: a local run would stop here: {refusal} (a cluster run with --address may not)",
                  file=stream)
    check_images(plan, store)
    return plan, tracking_uri


def _end(tracker, status: str, reason: str) -> None:
    """Mark the parent run on the way out of an error; a tracking store that fails too (a full disk) must not
    hide the error that ended the run."""
    with contextlib.suppress(Exception):
        tracker.finish(status, reason)


def _run(plan: Plan, grid, store: ResultStore, tracker, address: str | None, max_concurrent: int | None,
         started: float, stream) -> Summary:
    """Ray up, the plan's units scheduled, Ray down (also on an error or a stop signal), the report written."""
    from ray_jobs.running.reporting import Reporter
    from ray_jobs.running.scheduler import Scheduler

    reporter = Reporter(plan, store, tracker, background=True)  # MLflow off the scheduling loop
    store.sweep_stale()
    session = None
    if not address:
        killed, removed = sweep_sessions()
        if removed:
            print(f"removed {removed} Ray session folders of killed invocations"
                  f"{f' and stopped {killed} processes left behind' if killed else ''}", file=stream)
    import ray

    failed = True
    try:
        init_ray(address, max_concurrent, store)
        rearm()  # ray.init replaces SIGTERM's handler with one that exits without cleaning up
        if not address:
            session = current_session()
            if session is not None:
                mark_session(session)
        check_resources(plan, grid.resources, cluster_capacity(),
                        f"the Ray cluster at {redact(address)}" if address else "the local Ray instance")
        outcome = Scheduler(plan, store, grid.resources, grid.retries, max_concurrent,
                            on_done=reporter.unit_done, on_failed=reporter.unit_failed, stream=stream,
                            flush=reporter.flush).run()
        failed = bool(outcome.failed)
    except BaseException:
        reporter.kill()
        raise
    finally:
        ray.shutdown()
        if session is not None and not failed:  # a failed run keeps Ray's logs until the next invocation
            remove_session(session)
    summary = Summary(plan.counts(), outcome.failed, len(outcome.cached), time.time() - started, outcome.compute_seconds)
    summary.report = reporter.finish(grid, summary, stream)
    return summary
