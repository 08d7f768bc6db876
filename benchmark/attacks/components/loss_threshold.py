"""Global loss threshold (Chobola et al. 2022): members have a lower mean pixel cross-entropy.

score = -mean loss. Rule "member_mean" (theirs): the threshold is minus the mean loss of the shadow's
members; rule "balanced": the threshold that maximises balanced accuracy on the attacker's calibration images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.attacks.base import Attack, AttackerData, Observed
from benchmark.attacks.statistics import mean_pixel_loss
from benchmark.errors import SegleakError
from benchmark.params import Param
from benchmark.registry import ATTACKS


def image_statistic(observed: Observed, statistic) -> np.ndarray:
    """A per-image statistic as float64; images without a labelled pixel (NaN) are an error naming one."""
    released = observed.released
    values = statistic(released.log_probs, released.labels.long()).numpy()
    if not np.isfinite(values).all():
        bad = released.ids[int(np.flatnonzero(~np.isfinite(values))[0])]
        raise SegleakError(f"image {bad!r} has no labelled pixel: its statistic is undefined")
    return values


@ATTACKS.register_module()
class LossThreshold(Attack):
    name = "loss_threshold"
    order = 20
    params = {"rule": Param(str, default="member_mean", choices=("member_mean", "balanced"))}

    def fit(self, data: AttackerData, out: Path, seed: int) -> dict:
        member_scores = -image_statistic(data.shadow, mean_pixel_loss)[data.shadow.is_member]
        return {"member_mean": float(member_scores.mean())}

    def score(self, state: dict, fit_dir: Path, target: Observed, seed: int) -> np.ndarray:
        return -image_statistic(target, mean_pixel_loss)

    def threshold(self, state: dict) -> float | None:
        return state["member_mean"] if self.values["rule"] == "member_mean" else None
