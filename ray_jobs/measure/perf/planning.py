"""Planning: the units a profile's plan shares between cells vs the naive grid, and how long planning takes."""

from __future__ import annotations

import dataclasses
import io
import tempfile
import time
from typing import Any

from benchmark.errors import SegleakError
from ray_jobs.measure.perf.common import Row, verdict
from ray_jobs.recording.store import ResultStore

PAPER_SIZES = {"cityscapes": (2975, 500), "bdd100k": (7000, 1000), "mapillary": (18000, 2000)}


def fake_sources(grid: Any) -> dict[str, Any]:
    """Id lists of the right sizes (the synthetic profile's, or the real datasets' for real roots)."""
    from benchmark.data.splits import ImageIndex
    from ray_jobs.grid.sources import DataSource

    sources = {}
    for name, entry in grid.datasets.items():
        n_train, n_val = (grid.synthetic["n_train"], grid.synthetic["n_val"]) if entry.synthetic else PAPER_SIZES[name]
        index = ImageIndex(name, {"train": tuple(f"train/{name}_{i:05d}" for i in range(n_train)),
                                  "val": tuple(f"val/{name}_{i:05d}" for i in range(n_val))})
        sources[name] = DataSource(name, entry.spec, f"/data/{name}", index)
    return sources


def bench_planning(profile: str) -> dict[str, Any]:
    """Units the plan shares between cells vs the naive grid (each cell trains its own victim and shadow)."""
    from ray_jobs.grid.plan import build_plan
    from ray_jobs.grid.sources import make_manifests
    from ray_jobs.grid.spec import load_grid

    grid = load_grid(profile)
    sources = fake_sources(grid)
    error = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            manifests = make_manifests(grid, sources, ResultStore(tmp), stream=io.StringIO())
        except SegleakError as exc:  # reported, and the rest of the grid is still counted
            error = f"{exc}; counted without controls"
            grid = dataclasses.replace(grid, controls=())
            manifests = make_manifests(grid, sources, ResultStore(tmp), stream=io.StringIO())
        plan = build_plan(grid, sources, manifests)
    counts = plan.counts()
    return {"cells": counts["cell"], "models": counts["model"], "releases": counts["release"],
            "attack_models": counts["fit"], "naive_models": counts["naive_models"],
            "naive_attack_models": counts["cell"], "plan_seconds": time.perf_counter() - started, "error": error}


def planning_rows(plans: dict[str, dict[str, Any]]) -> list[Row]:
    return [Row(f"plan '{p}': cells / models / releases / attacks", f"{r['cells']} / {r['models']} / {r['releases']} / "
                f"{r['attack_models']} (naive {r['naive_models']} models, {r['naive_attack_models']} attacks)",
                "models < naive", verdict(r["models"] < r["naive_models"]) + (" (no placebo*)" if r["error"] else ""))
            for p, r in plans.items()]

