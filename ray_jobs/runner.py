"""`segleak benchmark`: load the grid, prepare data and membership splits, plan, run on Ray, log to MLflow,
and write the leaderboard and plots.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.data.adapters import get_adapter
from benchmark.data.splits import Manifest, dependent_manifest, independent_manifest
from benchmark.errors import SegleakError
from benchmark.paths import default_tracking_uri
from ray_jobs.plan import SYNTHETIC, DataSource, build_plan, local_data_root, synthetic_root
from ray_jobs.spec import Grid, load_grid
from ray_jobs.store import CREDENTIAL_ENV, ResultStore

SYNTHETIC_DEFAULTS = {"n_train": 200, "n_val": 100, "size": [64, 128], "seed": 0}


@dataclass
class Summary:
    plan_counts: dict[str, int]
    failed: dict[str, str] = field(default_factory=dict)
    cached: int = 0
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


def prepare_sources(grid: Grid, store: ResultStore) -> dict[str, DataSource]:
    """Resolve each dataset's root (writing the synthetic copy once on this node) and list its image ids."""
    sources = {}
    for dataset, entry in grid.datasets.items():
        if entry["root"] == SYNTHETIC:
            root = synthetic_root(dataset, **{**SYNTHETIC_DEFAULTS, **grid.synthetic})
        else:
            root = str(Path(entry["root"]).expanduser().resolve())
        path = local_data_root(root, store.data_dir)
        adapter = get_adapter(dataset)
        ids = tuple(s.id for s in adapter.list_samples(path))
        val_ids = tuple(s.id for s in adapter.list_samples(path, "val"))
        sources[dataset] = DataSource(dataset, root, ids, val_ids)
    return sources


def make_manifests(grid: Grid, sources: dict[str, DataSource], store: ResultStore, stream=sys.stdout) -> dict[tuple, Manifest]:
    """Every membership manifest the grid needs, written to the store next to its digest."""
    manifests: dict[tuple, Manifest] = {}
    for seed in grid.seeds:
        for setting in grid.settings:
            victim = sources[setting.dataset]
            if setting.kind == "dependent":
                sizes = grid.splits.get("dependent")
                if not sizes:
                    raise SegleakError(f"grid {grid.source}: the dependent setting needs 'splits.dependent' sizes")
                common = dict(dataset=setting.dataset, seed=seed, **{f"n_{k}": v for k, v in sizes.items()})
                for overlap in grid.overlaps:
                    manifests[(seed, setting, overlap, False)] = dependent_manifest(victim.ids, overlap=overlap, **common)
                if "placebo" in grid.controls:
                    manifests[(seed, setting, grid.overlaps[0], True)] = dependent_manifest(
                        victim.ids, overlap=grid.overlaps[0], placebo=True, **common)
            else:
                flat = grid.splits.get("independent", {})
                sizes = {**{k: v for k, v in flat.items() if not isinstance(v, dict)}, **flat.get(setting.shadow_dataset, {})}
                val_ids = set(victim.val_ids)
                train_ids = [i for i in victim.ids if i not in val_ids]
                n_members = sizes.get("victim_members", len(train_ids))
                n_nonmembers = sizes.get("victim_nonmembers", len(victim.val_ids))
                if n_members > len(train_ids) or n_nonmembers > len(victim.val_ids):
                    raise SegleakError(f"grid {grid.source}: splits.independent asks for {n_members} members / "
                                       f"{n_nonmembers} non-members but {setting.dataset} has {len(train_ids)} train / "
                                       f"{len(victim.val_ids)} val images")
                shadow = sources[setting.shadow_dataset]
                common = dict(dataset=setting.dataset, victim_member_ids=train_ids[:n_members],
                              victim_nonmember_ids=list(victim.val_ids[:n_nonmembers]), shadow_dataset=setting.shadow_dataset,
                              shadow_ids=shadow.ids, n_shadow_members=sizes.get("shadow_members", len(shadow.ids) // 2),
                              n_shadow_nonmembers=sizes.get("shadow_nonmembers", len(shadow.ids) // 2), seed=seed)
                manifests[(seed, setting, 0.0, False)] = independent_manifest(**common)
                queried = set(common["victim_member_ids"]) | set(common["victim_nonmember_ids"])
                spare = [i for i in victim.ids if i not in queried][:n_members]
                if "placebo" in grid.controls and spare:
                    manifests[(seed, setting, 0.0, True)] = independent_manifest(placebo=True, placebo_ids=spare, **common)
                elif "placebo" in grid.controls:
                    print(f"note: no placebo control for {setting.dataset} <- {setting.shadow_dataset}: every "
                          f"{setting.dataset} image is in a query set (the dependent setting's placebo checks the "
                          "pipeline)", file=stream)
    for manifest in manifests.values():
        store.write_json_atomic(f"splits/{manifest.digest()[:16]}.json", manifest.to_json())
    return manifests


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


def run_benchmark(profile: str | None = None, grid_file: str | None = None, results: str = "results",
                  tracking_uri: str | None = None, address: str | None = None, max_concurrent: int | None = None,
                  stream=sys.stdout) -> Summary:
    """Run a grid end to end; finished units from earlier invocations are reused, never recomputed."""
    started = time.time()
    grid = load_grid(profile, grid_file)
    store = ResultStore(results)
    tracking_uri = tracking_uri or default_tracking_uri(store.root)  # refuses a bucket: no SQLite file there
    store.prepare()
    print(f"segleak: grid {grid.name!r} from {grid.source}; results in {store.root}; MLflow at {tracking_uri}", file=stream)
    sources = prepare_sources(grid, store)
    plan = build_plan(grid, sources, make_manifests(grid, sources, store, stream))
    counts = plan.counts()
    print("plan: " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=stream, flush=True)

    from ray_jobs.reporting import Reporter
    from ray_jobs.scheduler import Scheduler
    from ray_jobs.tracking import Tracker

    tracker = Tracker(tracking_uri, grid.name, {"profile": profile or ("custom" if grid_file else "default"),
                                                "grid_name": grid.name, "grid_source": grid.source,
                                                "results": store.root, "ray_address": address or "local"})
    reporter = Reporter(plan, store, tracker)
    store.sweep_stale()
    init_ray(address, max_concurrent, store)
    import ray

    try:
        outcome = Scheduler(plan, store, grid.resources, grid.retries, max_concurrent,
                            on_done=reporter.unit_done, on_failed=reporter.unit_failed, stream=stream).run()
    finally:
        ray.shutdown()
    summary = Summary(counts, outcome.failed, len(outcome.cached), time.time() - started, outcome.compute_seconds)
    summary.report = reporter.finish(grid, summary, stream)
    tracker.finish(failed=bool(outcome.failed))
    return summary
