"""`fit` units: an attack fitted on the attacker's own data (its shadow model's outputs, through the
output defense it attacks), with its calibration figures from a held-out part of that data.

Not the grid cell: MLflow's `segleak.kind=attack` runs are cells (the MLflow contract in analysis/schema.py); a fit has no run of
its own, and its calibration AUC and threshold are logged with every cell that uses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from benchmark.attacks.base import AttackerData
from benchmark.defenses import output_transform
from benchmark.metrics.membership import best_balanced_threshold, membership_metrics
from benchmark.registry import ATTACKS
from ray_jobs.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, write_summary
from ray_jobs.units.release import load_observed


@dataclass(frozen=True)
class FitConfig:
    release: str  # the shadow's release
    attack: dict[str, Any]  # {name, params}
    attack_train: dict[str, Any]  # the grid's `attack_train` block, for attacks that train a network
    output_defense: dict[str, Any]  # what the attacker passes its shadow's outputs through
    calibration_fraction: float
    seed: int


def build_attack(config: FitConfig):
    return ATTACKS.lookup(config.attack["name"])(attack_train=config.attack_train, **config.attack["params"])


@UNIT_KINDS.register_module()
class FitKind(UnitKind):
    name = "fit"
    stage = "attack"
    config_type = FitConfig

    def run(self, key: str, config: FitConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        attack = build_attack(config)
        with store.writing("fit", key, asdict(config)) as out:
            # the shadow's outputs get their own noise draw (seed + 1), independent of the victim's
            shadow = load_observed(store, config.release, output_transform(config.output_defense), config.seed + 1)
            refusal = attack.refusal(shadow.released.label_only)
            if refusal:
                return write_summary(out, {"refused": refusal})
            fitted = attack.fit_and_calibrate(AttackerData(shadow=shadow), out, config.seed, config.calibration_fraction)
            calibration = membership_metrics(fitted.calibration_scores, fitted.calibration_is_member, n_bootstrap=0)
            threshold = attack.threshold(fitted.state)
            if threshold is None:  # chosen on the attacker's calibration images, never on the victim's
                threshold = best_balanced_threshold(fitted.calibration_scores, fitted.calibration_is_member)
            return write_summary(out, {
                "state": fitted.state, "threshold": float(threshold), "calibration_auc": calibration["auc"],
                "n_calibration": int(len(fitted.calibration_scores)),
            })

    def brief(self, summary: dict[str, Any]) -> str:
        if "refused" in summary:
            return f"refused: {summary['refused']}"
        return f"calibration AUC {summary.get('calibration_auc', float('nan')):.3f} on {summary.get('n_calibration')} held-out images"
