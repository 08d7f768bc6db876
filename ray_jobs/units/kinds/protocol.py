"""`protocol` units: the LiRA evaluation protocol (Carlini et al. 2022) as a grid setting.

The online bank's K references, trained on random subsets of one pool, are each in turn the target and the
other K-1 its references; scores are pooled over targets, so the embedded data resolves low false-positive
rates (K x pool images, about K/2 x pool non-members) where one victim's 100 non-members cannot. The
scores are the fit's leave-one-reference-out calibration (cross-fitted over two folds of targets when the
attack is tuned, so no figure is chosen on the labels it reports). Nothing here reads the victim.

The interval of the AUC resamples whole images (an image appears once per target, so its K scores are not
independent). Threshold figures (balanced accuracy, precision, recall) are left out: their threshold would
be chosen on the same pseudo-targets' labels. The placebo keeps the scores and permutes each target's
membership labels (a seeded draw): labels independent of what the target trained on, so its AUC interval
must contain 0.5.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from benchmark.attacks.reference import CALIBRATION_FILE
from benchmark.data.adapters import get_adapter
from benchmark.metrics import membership_metrics
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS, write_summary
from ray_jobs.units.kinds.cell import SCORES, CellKind

PROTOCOL_SETTING = "lira_protocol"
THRESHOLD_METRICS = ("balanced_accuracy", "precision", "recall")


@dataclass(frozen=True)
class ProtocolConfig:
    fit: str  # a reference attack fitted on the online bank
    dataset: dict[str, Any]  # the bank's dataset (adapter spec), for the images' groups
    placebo: bool
    seed: int


def placebo_labels(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """Each target's membership labels permuted (a seeded draw): as many members, unrelated to its training."""
    rng = np.random.default_rng([seed, 77])
    labels = frame["is_member"].to_numpy(bool).copy()
    for target in sorted(frame["target"].unique()):
        rows = np.flatnonzero(frame["target"].to_numpy() == target)
        labels[rows] = rng.permutation(labels[rows])
    return labels


@UNIT_KINDS.register_module()
class ProtocolKind(CellKind):
    name = "protocol"
    stage = "cell"
    config_type = ProtocolConfig

    def run(self, key: str, config: ProtocolConfig, store: ResultStore, num_threads: int) -> dict[str, Any]:
        summary = store.read_unit("fit", config.fit)["summary"]
        with store.writing("protocol", key, asdict(config)) as out:
            if "refused" in summary:
                return write_summary(out, {"refused": summary["refused"]})
            frame = pd.read_csv(store.local_dir("fit", config.fit) / CALIBRATION_FILE, dtype={"image_id": str})
            member = placebo_labels(frame, config.seed) if config.placebo else frame["is_member"].to_numpy(bool)
            adapter = get_adapter(config.dataset)
            groups = [adapter.group_of(i) for i in frame["image_id"]]
            scores = frame["score"].to_numpy(float)
            metrics = membership_metrics(scores, member, threshold=summary["threshold"], seed=config.seed, groups=groups)
            reason = "LiRA protocol: a threshold would be chosen on the same pseudo-targets' labels"
            for name in THRESHOLD_METRICS:
                metrics[name] = None
                metrics["missing"][name] = reason
            metrics["missing"]["victim_miou"] = "LiRA protocol: the targets are the attacker's references"
            metrics.update(victim_miou=None, calibration_auc=summary["calibration_auc"], tuned=summary.get("tuned") or {},
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
