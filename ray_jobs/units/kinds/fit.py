"""`fit` units: an attack fitted on the attacker's own data (its shadow model's outputs, or its reference
models' outputs, through the output defense it attacks), with its calibration figures from a held-out part
of that data, and its hyper-parameters tuned with Ray Tune when the grid asks (ray_jobs.running.tuning).

Not the grid cell: MLflow's `segleak.kind=attack` runs are cells (the MLflow contract in analysis/schema.py); a fit
has no run of its own, and its calibration AUC, threshold and tuned values are logged with every cell that uses it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from benchmark.attacks.base import Attack, AttackerData
from benchmark.attacks.reference import Bank
from benchmark.defenses import output_transform
from benchmark.defenses.base import OutputDefense
from benchmark.errors import SegleakError
from benchmark.metrics.membership import best_balanced_threshold, membership_metrics
from benchmark.metrics.selection import auc_lower_bound
from benchmark.registry import ATTACKS, DEFENSES
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, UnitKind, write_summary
from ray_jobs.units.kinds.release import load_observed


@dataclass(frozen=True)
class FitConfig:
    release: str | None  # the shadow's release (None for attacks on a reference bank)
    attack: dict[str, Any]  # {name, params, tune (optional: candidate values per parameter)}
    attack_train: dict[str, Any]  # the grid's `attack_train` block, for attacks that train a network
    output_defense: dict[str, Any]  # what the attacker passes its shadow's (or references') outputs through
    calibration_fraction: float
    seed: int
    references: list[str] = field(default_factory=list)  # release keys of a reference bank, in index order
    pool: list[str] = field(default_factory=list)  # the images the bank's references were drawn from
    population: list[str] = field(default_factory=list)  # the attacker's population (RMIA's z)
    queries: list[str] = field(default_factory=list)  # victim query images the bank must never have trained on


def build_attack(config: FitConfig, tuned: dict[str, Any] | None = None) -> Attack:
    """The fit's attack, with its tuned values (from the fit's summary) when there are any."""
    attack = ATTACKS.lookup(config.attack["name"])(attack_train=config.attack_train, **config.attack["params"])
    return attack.with_values(tuned) if tuned else attack


def trained_on(store: ResultStore, release_key: str) -> set[str]:
    """Every image the model behind a release trained on: its training list and what its data loader recorded."""
    model_key = store.read_unit("release", release_key)["config"]["model"]
    record = store.read_unit("model", model_key)
    seen = json.loads((store.local_dir("model", model_key) / "seen_train_ids.json").read_text())
    return set(record["config"]["train_ids"]) | set(seen)


def load_bank(store: ResultStore, config: FitConfig, defense: OutputDefense | None) -> Bank:
    """The references' outputs through the output defense (a fresh noise draw per reference), aligned on one
    id order, with their masks. Refuses a bank any of whose models trained on one of `config.queries`."""
    references, masks, ids = [], [], None
    for k, key in enumerate(config.references):
        trained = trained_on(store, key)
        leaked = trained & set(config.queries)
        if leaked:
            raise SegleakError(f"reference {k} of the bank (release {key}) trained on victim query image "
                               f"{sorted(leaked)[0]!r}: an offline attack's references must never see one")
        observed = load_observed(store, key, defense, config.seed + 1 + 7919 * (k + 1))
        ids = ids or sorted(observed.released.ids)
        references.append(observed.released.select(ids))
        masks.append(np.isin(ids, sorted(trained)))
    return Bank(ids or [], references, np.array(masks), list(config.pool), list(config.population))


@UNIT_KINDS.register_module()
class FitKind(UnitKind):
    name = "fit"
    stage = "attack"
    config_type = FitConfig
    version = 2  # the summary records the calibration AUC's lower bound (the strongest-attack rule reads it)
    shaped_by = {"attack": ATTACKS, "output_defense": DEFENSES}

    def run(self, key: str, config: FitConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        attack = build_attack(config)
        with store.writing("fit", key, asdict(config)) as out:
            defense = output_transform(config.output_defense)
            if config.references:
                bank = load_bank(store, config, defense)
                data, label_only = AttackerData(extras={"bank": bank}), bank.references[0].label_only
            else:  # the shadow's outputs get their own noise draw (seed + 1), independent of the victim's
                shadow = load_observed(store, config.release, defense, config.seed + 1)
                data, label_only = AttackerData(shadow=shadow), shadow.released.label_only
            refusal = attack.refusal(label_only)
            if refusal:
                return write_summary(out, {"refused": refusal})
            tuned, folds = {}, None
            if config.attack.get("tune"):
                from ray_jobs.running.tuning import tune_attack

                folds = tune_attack(attack, data, config.attack["tune"], config.seed, config.calibration_fraction)
                tuned = folds["all"]
                attack = attack.with_values(tuned)
            fitted = attack.fit_and_calibrate(data, out, config.seed, config.calibration_fraction, fold_values=folds)
            calibration = membership_metrics(fitted.calibration_scores, fitted.calibration_is_member, n_bootstrap=0)
            threshold = attack.threshold(fitted.state)
            if threshold is None:  # chosen on the attacker's calibration images, never on the victim's
                threshold = best_balanced_threshold(fitted.calibration_scores, fitted.calibration_is_member)
            per_image = max(1, len(config.references))  # leave-one-out rows repeat an image once per target
            low = auc_lower_bound(calibration["auc"], calibration["n_members"] / per_image,
                                  calibration["n_nonmembers"] / per_image)
            return write_summary(out, {
                "state": fitted.state, "threshold": float(threshold), "calibration_auc": calibration["auc"],
                "calibration_auc_low": low,
                "n_calibration": int(len(fitted.calibration_scores)), "tuned": tuned,
                **({"tuned_folds": folds} if folds else {}),
            })

    def brief(self, summary: dict[str, Any]) -> str:
        if "refused" in summary:
            return f"refused: {summary['refused']}"
        tuned = f", tuned {json.dumps(summary['tuned'], sort_keys=True)}" if summary.get("tuned") else ""
        return (f"calibration AUC {summary.get('calibration_auc', float('nan')):.3f} on {summary.get('n_calibration')} "
                f"held-out images{tuned}")
