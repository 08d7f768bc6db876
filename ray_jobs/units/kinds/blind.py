"""`blind` units: a setting's blind baseline and shift test (benchmark.attacks.blind), from the images and
labels alone; one per (setting, seed), shown next to the setting in the report and flagged when either
interval excludes 0.5."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analysis import schema
from benchmark.attacks.blind import features, shadow_fitted_scores, shift_test
from benchmark.data.adapters import get_adapter
from benchmark.data.roots import local_data_root
from benchmark.metrics import membership_metrics
from benchmark.models.train import select_samples
from benchmark.registry import DATASETS
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, write_summary


@dataclass(frozen=True)
class BlindConfig:
    dataset: dict[str, Any]
    root: str
    members: list[str]  # the victim's scored query images
    nonmembers: list[str]
    shadow_dataset: dict[str, Any]
    shadow_root: str
    shadow_members: list[str]
    shadow_nonmembers: list[str]
    image_size: list[int] | None
    seed: int


@dataclass(frozen=True)
class BlindMeta:
    dataset: str
    shadow_dataset: str
    setting: str
    seed: int
    overlap: float | str


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}_{k}": metrics[k] for k in ("auc", "auc_ci_low", "auc_ci_high")}


@UNIT_KINDS.register_module()
class BlindKind(UnitKind):
    name = "blind"
    stage = "cell"
    config_type = BlindConfig
    shaped_by = {"dataset": DATASETS, "shadow_dataset": DATASETS}

    def run(self, key: str, config: BlindConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        adapter, shadow_adapter = get_adapter(config.dataset), get_adapter(config.shadow_dataset)
        root = local_data_root(config.root, store.data_dir)
        shadow_root = local_data_root(config.shadow_root, store.data_dir)
        with store.writing("blind", key, asdict(config)) as out:
            ids = config.members + config.nonmembers
            x = features(adapter, select_samples(adapter, root, ids, "query"))
            is_member = np.arange(len(ids)) < len(config.members)
            shadow_ids = config.shadow_members + config.shadow_nonmembers
            shadow_x = features(shadow_adapter, select_samples(shadow_adapter, shadow_root, shadow_ids, "shadow"))
            groups = [adapter.group_of(i) for i in ids]
            blind = shadow_fitted_scores(shadow_x, np.arange(len(shadow_ids)) < len(config.shadow_members), x)
            summary = _prefixed(membership_metrics(blind, is_member, seed=config.seed, groups=groups), "blind")
            shift = shift_test(x, is_member, groups, config.seed)
            if shift is not None:
                summary.update({f"shift_{k}": v for k, v in shift.items()})
            summary.update(n_members=len(config.members), n_nonmembers=len(config.nonmembers),
                           n_groups=len(set(groups)))
            summary["flagged"] = bool(summary["blind_auc_ci_low"] > 0.5 or summary.get("shift_p_value", 1.0) < 0.05)
            return write_summary(out, summary)

    def images(self, config: BlindConfig) -> list[tuple[str, dict[str, Any], list[str]]]:
        return [(config.root, config.dataset, [*config.members, *config.nonmembers]),
                (config.shadow_root, config.shadow_dataset, [*config.shadow_members, *config.shadow_nonmembers])]

    def brief(self, summary: dict[str, Any]) -> str:
        shift = f", shift test {summary['shift_auc']:.3f} (p {summary['shift_p_value']:.2f})" if "shift_auc" in summary else ""
        return f"blind AUC {summary['blind_auc']:.3f}{shift}{'  FLAGGED: members and non-members differ' if summary['flagged'] else ''}"

    def log(self, tracker, unit, summary, store) -> None:
        meta: BlindMeta = unit.meta
        tracker.log_run(schema.BLIND, schema.run_name(meta.setting, "no model", "blind baseline",
                                                      f"{meta.dataset} <- {meta.shadow_dataset} ov={meta.overlap} "
                                                      f"seed {meta.seed}"),
                        params={k: getattr(meta, k) for k in schema.BLIND_PARAMS},
                        tags={schema.UNIT_TAG: unit.key, schema.SETTING_TAG: meta.setting,
                              "segleak.flagged": str(summary["flagged"]).lower()},
                        metrics={k: summary.get(k) for k in schema.BLIND_METRICS})
