"""`protocol` units: the LiRA evaluation protocol (Carlini et al. 2022) as a grid setting.

The online bank's K references, trained on random subsets of one pool, are each in turn the target and the
other K-1 its references; scores are pooled over targets, so the embedded data resolves low false-positive
rates (K x pool images, about K/2 x pool non-members) where one victim's 100 non-members cannot. The
scores are the fit's leave-one-reference-out calibration (cross-fitted over two folds of targets when the
attack is tuned, so no figure is chosen on the labels it reports). Nothing here reads the victim.

The interval of the AUC resamples whole images (an image appears once per target, so its K scores are not
independent). Threshold figures (balanced accuracy, precision, recall) are left out: their threshold would
be chosen on the same pseudo-targets' labels. The AUCs of the even- and odd-index targets are recorded apart,
so that a cell's strongest attack is chosen on one fold and read on the other (analysis.aggregate).

The placebo runs placebo models through the same leave-one-reference-out code: P models trained on fresh
subsets of the pool (in no bank), each taking reference j = p mod K's place as target j, against j's bank
and labelled with j's recorded mask (`ReferenceAttack.placebo_leave_one_out`). Their signals never depended
on those labels, so the AUC is at chance unless the protocol leaks a target's labels into its scores; a
pseudo-target left inside its own bank raises the real protocol's AUC (0.76 measured) and this placebo's with
it, where the permuted labels of fixed scores used before stayed at 0.49 whatever the scores were. Its
interval resamples placebo models and images together (`benchmark.metrics.placebo`), so the spread between
training draws is in it.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from benchmark.attacks.reference import BANK_FILE, CALIBRATION_FILE
from benchmark.data.adapters import get_adapter
from benchmark.defenses import output_transform
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics
from benchmark.metrics.placebo import placebo_verdict
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, write_summary
from ray_jobs.units.kinds.cell import SCORES, CellKind
from ray_jobs.units.kinds.fit import FitConfig, build_attack
from ray_jobs.units.kinds.release import load_observed

PROTOCOL_SETTING = "lira_protocol"
THRESHOLD_METRICS = ("balanced_accuracy", "precision", "recall")
FOLD_METRICS = ("auc_fold_even", "auc_fold_odd")  # the AUC on the even- and odd-index targets


@dataclass(frozen=True)
class ProtocolConfig:
    fit: str  # a reference attack fitted on the online bank
    dataset: dict[str, Any]  # the bank's dataset (adapter spec), for the images' groups
    placebo: bool
    seed: int
    placebos: list[str] = field(default_factory=list)  # the placebo models' releases (placebo cells only)


def placebo_frame(store: ResultStore, fit_key: str, placebos: list[str]) -> pd.DataFrame:
    """The placebo models' leave-one-out rows (image_id, target = placebo index p, is_member = reference
    p mod K's recorded mask, score), their outputs through the fit's output defense (a fresh noise
    draw each) and scored with the fit's tuned values, fold by fold, as the real targets are."""
    record = store.read_unit("fit", fit_key)
    fit, summary = FitConfig(**record["config"]), record["summary"]
    attack = build_attack(fit, summary.get("tuned"))
    with np.load(store.local_dir("fit", fit_key) / BANK_FILE, allow_pickle=False) as saved:
        ids, stats, masks = [str(i) for i in saved["ids"]], saved["stats"], saved["masks"]
        pool, population = [str(i) for i in saved["pool"]], [str(i) for i in saved["population"]]
    if set(placebos) & set(fit.references):
        raise SegleakError(f"protocol placebo: release {sorted(set(placebos) & set(fit.references))[0]} is a "
                           "reference of the bank it is scored against")
    defense = output_transform(fit.output_defense)
    signals = np.stack([
        attack.signals(load_observed(store, key, defense, fit.seed + 1 + 7919 * (len(stats) + 1 + p)).released.select(ids))
        for p, key in enumerate(placebos)])
    rows = attack.placebo_leave_one_out(stats, masks, ids, pool, population, signals, summary.get("tuned_folds"))
    return pd.DataFrame({
        "image_id": np.tile(pool, len(rows)), "target": np.repeat([p for p, _, _ in rows], len(pool)),
        "is_member": np.concatenate([m for _, _, m in rows]).astype(int),
        "score": np.concatenate([s for _, s, _ in rows])})


@UNIT_KINDS.register_module()
class ProtocolKind(CellKind):
    name = "protocol"
    stage = "cell"
    config_type = ProtocolConfig
    version = 2  # placebo models through the leave-one-out code, not permuted labels of fixed scores; fold AUCs

    def run(self, key: str, config: ProtocolConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        summary = store.read_unit("fit", config.fit)["summary"]
        with store.writing("protocol", key, asdict(config)) as out:
            if "refused" in summary:
                return write_summary(out, {"refused": summary["refused"]})
            if config.placebo and not config.placebos:
                raise SegleakError(f"protocol {key}: a placebo cell needs placebo models (`placebos` is empty)")
            frame = (placebo_frame(store, config.fit, config.placebos) if config.placebo else
                     pd.read_csv(store.local_dir("fit", config.fit) / CALIBRATION_FILE, dtype={"image_id": str}))
            member = frame["is_member"].to_numpy(bool)
            adapter = get_adapter(config.dataset)
            groups = [adapter.group_of(i) for i in frame["image_id"]]
            scores = frame["score"].to_numpy(float)
            metrics = membership_metrics(scores, member, threshold=summary["threshold"], seed=config.seed, groups=groups)
            if config.placebo:  # the interval resamples placebo models too: their spread is part of the null
                verdict = placebo_verdict(scores, member, frame["target"].to_numpy(), groups, seed=config.seed)
                metrics.update(auc_ci_low=verdict["auc_ci_low"], auc_ci_high=verdict["auc_ci_high"],
                               placebo_pass=verdict["passed"], n_placebo_models=verdict["n_models"])
            reason = "LiRA protocol: a threshold would be chosen on the same pseudo-targets' labels"
            for name in THRESHOLD_METRICS:
                metrics[name] = None
                metrics["missing"][name] = reason
            metrics["missing"]["victim_miou"] = "LiRA protocol: the targets are the attacker's references"
            # the AUC of each fold of targets (even, odd index): aggregate chooses a cell's strongest attack on
            # one fold and reads it on the other (the choice is cross-fitted, not made on the figure reported)
            fold = frame["target"].to_numpy() % 2
            for name, f in zip(FOLD_METRICS, (0, 1)):
                rows = fold == f
                metrics[name] = (float(membership_metrics(scores[rows], member[rows], n_bootstrap=0)["auc"])
                                 if member[rows].any() and not member[rows].all() else None)
            metrics.update(victim_miou=None, calibration_auc=summary["calibration_auc"],
                           calibration_auc_low=summary.get("calibration_auc_low"), tuned=summary.get("tuned") or {},
                           n_targets=int(frame["target"].nunique()))
            with open(out / SCORES, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image_id", "group", "target", "is_member", "score"])
                writer.writerows(zip(frame["image_id"], groups, frame["target"], member.astype(int), scores))
            return write_summary(out, metrics)

    def brief(self, summary: dict[str, Any]) -> str:
        if "refused" in summary:
            return f"refused: {summary['refused']}"
        tpr = summary.get("tpr_at_0.1pct_fpr")
        low = "" if tpr is None else f", TPR@0.1%FPR {tpr:.3f}"
        return (f"AUC {summary['auc']:.3f} [{summary['auc_ci_low']:.3f}, {summary['auc_ci_high']:.3f}]{low} over "
                f"{summary['n_targets']} targets, {summary['n_nonmembers']} non-members")
