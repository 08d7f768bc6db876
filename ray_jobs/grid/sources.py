"""The data side of a run: each grid dataset resolved to a root and an index of its images, and every
membership manifest the grid needs, drawn by the same functions `segleak splits` calls."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.data.roots import local_data_root, synthetic_root
from benchmark.data.splits import ImageIndex, Manifest, dependent_manifest, image_index, independent_manifest
from benchmark.data.synth import SynthSpec
from benchmark.errors import SegleakError
from ray_jobs.grid.spec import Grid
from ray_jobs.recording.store import ResultStore


@dataclass(frozen=True)
class DataSource:
    """A grid dataset: its adapter spec, its root (a POSIX path on every node, or a `synthetic://` URI) and
    its image ids by split with their groups."""

    name: str
    spec: dict[str, Any]
    root: str
    index: ImageIndex


def data_sources(grid: Grid) -> str:
    """The invocation's record of where each dataset came from (analysis.schema.DATA_SOURCES_PARAM): the
    synthetic twins carry real datasets' names, so the report says which ones they are."""
    return json.dumps({name: "synthetic" if entry.synthetic else "real" for name, entry in sorted(grid.datasets.items())})


def prepare_sources(grid: Grid, store: ResultStore) -> dict[str, DataSource]:
    """Resolve each dataset's root (writing the synthetic copy once on this node) and index its images."""
    sources = {}
    for name, entry in grid.datasets.items():
        if entry.synthetic:
            root = synthetic_root(SynthSpec.of(entry.spec, **grid.synthetic))
        else:
            root = str(Path(entry.root).expanduser().resolve())
        try:  # a missing folder, a group_pattern that backtracks without end: named with the grid and dataset
            index = image_index(name, entry.adapter, local_data_root(root, store.data_dir))
        except SegleakError as exc:
            raise SegleakError(f"grid {grid.source}: datasets.{name}: {exc}") from None
        if not index.ids:
            raise SegleakError(f"dataset {name} at {entry.root}: no image/label pairs found (check it with "
                               f"`segleak data check --dataset {entry.spec['type']} --root {entry.root}`)")
        sources[name] = DataSource(name, entry.spec, root, index)
    return sources


def make_manifests(grid: Grid, sources: dict[str, DataSource], store: ResultStore,
                   stream=sys.stdout) -> dict[tuple, Manifest]:
    """Every membership manifest the grid needs (placebo ones at every overlap), written to the store next to
    its digest; keyed by (seed, setting, overlap, placebo)."""
    manifests: dict[tuple, Manifest] = {}
    placebo = "placebo" in grid.controls
    for seed in grid.seeds:
        for setting in grid.settings:
            spec = grid.split_spec(setting)
            victim = sources[setting.dataset].index
            if setting.kind == "dependent":
                for overlap in grid.overlaps:
                    for control in (False, True) if placebo else (False,):
                        manifests[(seed, setting, overlap, control)] = _named(
                            grid, setting.dataset, dependent_manifest, victim, spec, overlap=overlap, seed=seed,
                            placebo=control)
                continue
            shadow = sources[setting.shadow_dataset].index
            manifests[(seed, setting, 0.0, False)] = _named(grid, setting.dataset, independent_manifest, victim,
                                                            shadow, spec, seed=seed)
            if placebo:
                try:
                    manifests[(seed, setting, 0.0, True)] = independent_manifest(victim, shadow, spec, seed=seed,
                                                                                 placebo=True)
                except SegleakError as exc:
                    print(f"note: no placebo control for {setting.dataset} <- {setting.shadow_dataset} ({exc}); "
                          "the dependent setting's placebo checks the pipeline", file=stream)
    for manifest in manifests.values():
        store.write_json_atomic(f"splits/{manifest.digest()[:16]}.json", manifest.to_json())
    return manifests


def _named(grid: Grid, dataset: str, draw, *args, **kwargs) -> Manifest:
    try:
        return draw(*args, **kwargs)
    except SegleakError as exc:
        raise SegleakError(f"grid {grid.source}: splits for {dataset}: {exc}") from None
