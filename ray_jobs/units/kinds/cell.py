"""`cell` units: a fitted attack scored on a victim's released outputs = one leaderboard entry.

The cell scores only the victim's query images the attacker never trained on (`scored_ids`: with shadow
overlap, the shared members and, under a group split, their near-duplicates are left out), hands the
attack the victim's outputs without their membership, and keeps the victim's membership labels for the
metrics alone. Groups of images (from the dataset adapter) make the AUC interval a cluster bootstrap.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from analysis import schema
from benchmark.attacks.base import Observed
from benchmark.data.adapters import get_adapter
from benchmark.defenses import output_transform
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics
from benchmark.metrics.segmentation import confusion_matrix, miou
from benchmark.registry import DATASETS, DEFENSES
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, write_summary
from ray_jobs.units.kinds.fit import FitConfig, build_attack
from ray_jobs.units.kinds.release import load_observed

SCORES = "scores.csv"


@dataclass(frozen=True)
class CellConfig:
    fit: str
    release: str  # the victim's release
    victim_model: str
    dataset: dict[str, Any]  # the victim dataset's adapter spec (for the images' groups)
    output_defense: dict[str, Any]  # the victim's output defense
    scored_ids: list[str]
    seed: int
    population: str | None = None  # the victim's release on the attacker's population (RMIA's z)


@dataclass(frozen=True)
class CellMeta:
    dataset: str
    victim_arch: str
    shadow_dataset: str
    shadow_arch: str
    shadow_overlap: float | str
    defense: str
    defense_params: str
    defense_label: str
    attack: str
    representation: str
    attack_label: str
    seed: int
    control: str
    setting: str
    adaptive: bool
    placebo_model: int = 0  # which placebo victim (training draw) of the recipe; 0 for every other cell


@UNIT_KINDS.register_module()
class CellKind(UnitKind):
    name = "cell"
    stage = "cell"
    config_type = CellConfig
    shaped_by = {"dataset": DATASETS, "output_defense": DEFENSES}

    def run(self, key: str, config: CellConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        fit_record = store.read_unit("fit", config.fit)
        fit_summary = fit_record["summary"]
        victim_summary = store.read_unit("model", config.victim_model)["summary"]
        dp = {k: victim_summary[k] for k in ("dp_epsilon", "dp_delta") if k in victim_summary}
        with store.writing("cell", key, asdict(config)) as out:
            if "refused" in fit_summary:
                return write_summary(out, {"refused": fit_summary["refused"], **dp})
            victim = load_observed(store, config.release, output_transform(config.output_defense), config.seed)
            # utility: the victim's mIoU on all its held-out query images, whatever the cell scores
            heldout = torch.from_numpy(~victim.is_member)
            released = victim.released
            conf = confusion_matrix(released.log_probs[heldout].argmax(1), released.labels[heldout].long(),
                                    released.log_probs.shape[1])
            scored = np.isin(released.ids, config.scored_ids)
            if scored.sum() != len(config.scored_ids):
                raise SegleakError(f"release {config.release} lacks scored images of cell {key}")
            target = victim.subset(scored)
            attack = build_attack(FitConfig(**fit_record["config"]), fit_summary.get("tuned"))
            population = None
            if config.population:  # the same output defense, its own noise draw
                population = load_observed(store, config.population, output_transform(config.output_defense),
                                           config.seed + 3).released
            scores = attack.score(fit_summary["state"], store.local_dir("fit", config.fit),
                                  Observed(target.released, population=population), config.seed + 2)  # no membership
            if not np.all(np.isfinite(scores)):
                raise SegleakError(f"attack {config.fit} produced non-finite scores on release {config.release}")
            adapter = get_adapter(config.dataset)
            groups = [adapter.group_of(i) for i in target.released.ids]
            metrics = membership_metrics(scores, target.is_member, threshold=fit_summary["threshold"],
                                         seed=config.seed, groups=groups)
            metrics.update(victim_miou=miou(conf), calibration_auc=fit_summary["calibration_auc"],
                           calibration_auc_low=fit_summary.get("calibration_auc_low"),
                           n_excluded=int((~scored).sum()), tuned=fit_summary.get("tuned") or {}, **dp)
            with open(out / SCORES, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image_id", "group", "is_member", "score"])
                # full precision (no rounding): an offline LiRA score a hair below 0 is all signal
                writer.writerows(zip(target.released.ids, groups, target.is_member.astype(int), scores))
            return write_summary(out, metrics)

    def brief(self, summary: dict[str, Any]) -> str:
        if "refused" in summary:
            return f"refused: {summary['refused']}"
        return f"AUC {summary['auc']:.3f} [{summary['auc_ci_low']:.3f}, {summary['auc_ci_high']:.3f}]"

    def _run(self, tracker, unit, status: str, tags: dict[str, str], metrics: dict[str, Any], artifacts=()) -> None:
        meta: CellMeta = unit.meta
        name = schema.run_name(meta.setting, meta.defense_label, meta.attack_label,
                               f"{meta.victim_arch} <- {meta.shadow_arch} ov={meta.shadow_overlap} seed {meta.seed}",
                               meta.control)
        tracker.log_run(schema.CELL, name,
                        params={schema.LOGGED_AS.get(k, k): getattr(meta, k) for k in schema.CELL_PARAMS},
                        tags={schema.UNIT_TAG: unit.key, schema.SETTING_TAG: meta.setting,
                              schema.ADAPTIVE_TAG: str(meta.adaptive).lower(), **tags},
                        metrics=metrics, artifacts=artifacts, status=status)

    def log(self, tracker, unit, summary, store) -> None:
        if "refused" in summary:
            self._run(tracker, unit, "FINISHED", {schema.REFUSED_TAG: summary["refused"]}, {})
            return
        cell_dir = store.local_dir(self.name, unit.key)
        roc = cell_dir / "roc.png"
        if not roc.exists():  # drawn on the driver: matplotlib stays out of the workers
            import pandas as pd

            from analysis.roc import plot_cell_roc

            plot_cell_roc(pd.read_csv(cell_dir / SCORES), roc, title=unit.label, attack=unit.meta.attack_label)
        tags = {f"{schema.MISSING_PREFIX}{k}": v for k, v in (summary.get("missing") or {}).items()}
        if summary.get("tuned"):
            tags[schema.TUNED_TAG] = json.dumps(summary["tuned"], sort_keys=True)
        tags.update({f"segleak.fragile.{k}": v for k, v in (summary.get("fragile") or {}).items()})
        self._run(tracker, unit, "FINISHED", tags, {k: summary.get(k) for k in schema.CELL_METRICS},
                  [cell_dir / SCORES, roc])

    def log_failure(self, tracker, unit, error: str) -> None:
        self._run(tracker, unit, "FAILED", {schema.ERROR_TAG: error[:4000]}, {})
