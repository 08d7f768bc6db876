"""Calibrated loss (difficulty calibration: Watson et al., ICLR 2022; Shafran et al.'s membership error,
ICCV 2021, with references in place of a per-image predictor): an image is suspicious when the target's loss
on it is lower than the references' usual loss on it, which separates hard members from easy non-members.

score = mean over OUT references of the image's mean pixel log p_y, subtracted from the target's:
(mean OUT loss) - (target loss). Offline bank (references never trained on a victim query image). On
label-only releases the loss is minus the log of the smoothed pixel accuracy (signals.py).
"""

from __future__ import annotations

import numpy as np

from benchmark.attacks.reference import BankView, ReferenceAttack, completed_means, moments
from benchmark.registry import ATTACKS


@ATTACKS.register_module()
class CalibratedLoss(ReferenceAttack):
    name = "calibrated_loss"
    order = 35
    kind = "log_prob"

    def bank_scores(self, view: BankView) -> np.ndarray:
        _, mean_out = completed_means(moments(view.refs, view.masks))
        return view.target - mean_out[view.index, 0]
