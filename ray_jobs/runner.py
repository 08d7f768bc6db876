"""`segleak benchmark`: load the grid, prepare data and membership splits, plan, run on Ray, log to MLflow,
and write the leaderboard and plots.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmark.paths import default_tracking_uri
from ray_jobs.plan import Plan, build_plan
from ray_jobs.reporting import Summary
from ray_jobs.sources import make_manifests, prepare_sources
from ray_jobs.spec import load_grid
from ray_jobs.store import CREDENTIAL_ENV, ResultStore


def init_ray(address: str | None, max_concurrent: int | None, store: ResultStore) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # workers allocate large fresh tensors (posterior maps, attack inputs): transparent huge pages in torch's
    # CPU allocator cut their first-touch page faults (the concatenation input builds ~2.5x faster)
    env_vars = {"THP_MEM_ALLOC_ENABLE": "1"}
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


def run_benchmark(profile: str | None = None, grid_file: str | None = None, results: str = "results",
                  tracking_uri: str | None = None, address: str | None = None, max_concurrent: int | None = None,
                  dry_run: bool = False, gpu_check: str | None = None, stream=sys.stdout) -> Summary:
    """Run a grid end to end; finished units from earlier invocations are reused, never recomputed.

    `dry_run`: validate the grid and the data, print the plan (units per kind, the naive count, what is
    already finished) and its estimated GPU-hours (ray_jobs.estimate: from `gpu_check`, a `make gpu-check`
    JSON, else <results>/gpu-check.json, else the committed H200 measurement), and stop before Ray starts
    or MLflow is touched. A real run prints the estimate when `gpu_check` is given."""
    started = time.time()
    grid = load_grid(profile, grid_file)
    store = ResultStore(results)
    tracking_uri = tracking_uri or default_tracking_uri(store.root)  # refuses a bucket: no SQLite file there
    store.prepare()
    print(f"segleak: grid {grid.name!r} from {grid.source}; results in {store.root}; MLflow at {tracking_uri}", file=stream)
    sources = prepare_sources(grid, store)
    plan = build_plan(grid, sources, make_manifests(grid, sources, store, stream))
    counts = plan.counts()
    print_plan(plan, store, stream)
    if dry_run or gpu_check:
        from ray_jobs.estimate import print_estimate

        print_estimate(plan, grid, gpu_check, results, stream)
    if dry_run:
        return Summary(counts, cached=sum(store.is_done(u.kind, u.key) for u in plan.units.values()))

    from ray_jobs.reporting import Reporter
    from ray_jobs.scheduler import Scheduler
    from ray_jobs.tracking import Tracker

    tracker = Tracker(tracking_uri, grid.name, {"profile": profile or ("custom" if grid_file else "default"),
                                                "grid_name": grid.name, "grid_source": grid.source,
                                                "results": store.root, "ray_address": address or "local"})
    reporter = Reporter(plan, store, tracker, background=True)  # MLflow off the scheduling loop
    store.sweep_stale()
    init_ray(address, max_concurrent, store)
    import ray

    try:
        outcome = Scheduler(plan, store, grid.resources, grid.retries, max_concurrent,
                            on_done=reporter.unit_done, on_failed=reporter.unit_failed, stream=stream,
                            flush=reporter.flush).run()
    except BaseException:
        reporter.kill()
        raise
    finally:
        ray.shutdown()
    summary = Summary(counts, outcome.failed, len(outcome.cached), time.time() - started, outcome.compute_seconds)
    summary.report = reporter.finish(grid, summary, stream)
    tracker.finish(failed=bool(outcome.failed))
    return summary
