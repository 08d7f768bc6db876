"""`release` units: a trained model queried on a set of images; what the attacker receives (float16
log-posteriors, see benchmark.models.release)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmark.attacks.base import Observed
from benchmark.data.adapters import get_adapter
from benchmark.data.roots import local_data_root
from benchmark.defenses.base import OutputDefense
from benchmark.models.release import defend, load_released, release_outputs, save_released
from benchmark.registry import DATASETS
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, write_summary

OUTPUTS = "outputs.npz"


@dataclass(frozen=True)
class ReleaseConfig:
    model: str
    dataset: dict[str, Any]
    root: str
    members: list[str]
    nonmembers: list[str]
    image_size: list[int] | None
    release: dict[str, Any]  # the grid's `release` block


@UNIT_KINDS.register_module()
class ReleaseKind(UnitKind):
    name = "release"
    stage = "release"
    config_type = ReleaseConfig
    shaped_by = {"dataset": DATASETS}

    def run(self, key: str, config: ReleaseConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        ids = config.members + config.nonmembers
        with store.writing("release", key, asdict(config)) as out:
            released = release_outputs(
                store.local_dir("model", config.model) / "model.pt", get_adapter(config.dataset),
                local_data_root(config.root, store.data_dir), ids,
                image_size=tuple(config.image_size) if config.image_size else None, **config.release,
            )
            save_released(released, out / OUTPUTS)
            return write_summary(out, {"n_images": len(ids), "shape": list(released.log_probs.shape),
                                       "bytes": (out / OUTPUTS).stat().st_size})

    def images(self, config: ReleaseConfig) -> list[tuple[str, dict[str, Any], list[str]]]:
        return [(config.root, config.dataset, [*config.members, *config.nonmembers])]

    def brief(self, summary: dict[str, Any]) -> str:
        return f"{summary.get('n_images', '?')} images"


def load_observed(store: ResultStore, release_key: str, defense: OutputDefense | None, seed: int) -> Observed:
    """A release passed through an output defense, with the membership of each image (for the caller: an
    attack is handed `is_member` only for the attacker's own models)."""
    record = store.read_unit("release", release_key)
    released = load_released(store.local_dir("release", release_key) / OUTPUTS)
    members = set(record["config"]["members"])
    return Observed(defend(released, defense, seed), np.array([i in members for i in released.ids], dtype=bool))
