"""The smoke profile end to end: wall time vs its units' own compute, the cached rerun, `ray.init`, and where
the time goes (cProfile of the units replayed in-process and of the driver's cached run)."""

from __future__ import annotations

import cProfile
import io
import time
from pathlib import Path
from typing import Any

from ray_jobs.measure.perf.common import Row, top_entries, torch_threads
from ray_jobs.recording.store import ResultStore


def time_ray_init(workdir: Path) -> float:
    """Seconds for the runner's own `ray.init` on this machine (then shut down)."""
    import ray

    from ray_jobs.running.runner import init_ray

    started = time.perf_counter()
    init_ray(None, None, ResultStore(workdir))
    elapsed = time.perf_counter() - started
    ray.shutdown()
    return elapsed


def replay_units(results: Path, scratch: Path) -> tuple[dict[str, float], cProfile.Profile]:
    """Re-run the smoke plan's units one by one in this process, into a fresh store, under cProfile."""
    from ray_jobs.grid.plan import build_plan
    from ray_jobs.grid.sources import make_manifests, prepare_sources
    from ray_jobs.grid.spec import load_grid
    from ray_jobs.units import execute

    grid = load_grid("smoke")
    sources = prepare_sources(grid, ResultStore(results))  # the smoke run's data, already written
    plan = build_plan(grid, sources, make_manifests(grid, sources, ResultStore(scratch), stream=io.StringIO()))
    seconds: dict[str, float] = {}
    profile = cProfile.Profile()
    with torch_threads(1):
        for unit in plan.topological():
            started = time.perf_counter()
            profile.enable()
            execute(unit.kind, unit.key, unit.config_dict, str(scratch), 1)
            profile.disable()
            seconds[unit.kind] = seconds.get(unit.kind, 0.0) + time.perf_counter() - started
    return seconds, profile


def bench_smoke(workdir: Path) -> dict[str, Any]:
    """Smoke profile end to end (then again, all cached) vs its units' own compute time."""
    from ray_jobs.running.runner import run_benchmark

    results = workdir / "smoke"
    ray_init = time_ray_init(workdir)
    first = run_benchmark(profile="smoke", results=str(results), stream=io.StringIO())
    ledger = ResultStore(results).ledger()
    driver = cProfile.Profile()
    driver.enable()
    second = run_benchmark(profile="smoke", results=str(results), stream=io.StringIO())
    driver.disable()
    in_process, unit_profile = replay_units(results, workdir / "replay")
    ledger_sum = sum(e["seconds"] for e in ledger)
    return {"wall_s": first.wall_seconds, "ledger_unit_s": ledger_sum, "units": len(ledger),
            "in_process_unit_s": in_process, "in_process_total_s": sum(in_process.values()),
            "wall_over_compute": first.wall_seconds / sum(in_process.values()), "cached_wall_s": second.wall_seconds,
            "cached_units": second.cached, "ray_init_s": ray_init,
            "driver_profile_cached_run": top_entries(driver), "units_profile_in_process": top_entries(unit_profile),
            "units_profile_own_time": top_entries(unit_profile, ours=False),
            "release_files": sorted(str(p) for p in (results / "release").glob("*/outputs.npz"))}


def smoke_rows(smoke: dict[str, Any] | None) -> list[Row]:
    if smoke is None:
        return [Row("smoke run (orchestration, profile)", "skipped (--quick)", "-", "skip")]
    return [
        Row("smoke wall vs units' own compute (in-process)",
            f"{smoke['wall_s']:.1f} vs {smoke['in_process_total_s']:.1f} s ({smoke['wall_over_compute']:.1f}x)", "report", "info"),
        Row("smoke units' time in the ledger (inside the store writer)", f"{smoke['ledger_unit_s']:.1f} s", "-", "info"),
        Row("ray.init", f"{smoke['ray_init_s']:.1f} s", "-", "info"),
        Row("smoke second invocation (all cached)", f"{smoke['cached_wall_s']:.1f} s", "-", "info"),
    ]

