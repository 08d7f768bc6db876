"""Label-only attack: members' top-1 maps match their ground truth better. score = pixel accuracy; it reads
only the top-1 class, so it survives argmax; the threshold maximises balanced accuracy on calibration images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.attacks.base import Attack, AttackerData, Observed
from benchmark.attacks.components.loss_threshold import image_statistic
from benchmark.attacks.statistics import pixel_accuracy
from benchmark.registry import ATTACKS


@ATTACKS.register_module()
class PixelAccuracy(Attack):
    name = "pixel_accuracy"
    order = 30

    def fit(self, data: AttackerData, out: Path, seed: int) -> dict:
        return {}

    def score(self, state: dict, fit_dir: Path, target: Observed, seed: int) -> np.ndarray:
        return image_statistic(target, pixel_accuracy)
