"""Per-canary audit scores (higher = "in"), from the audited model's released outputs on every canary.

- `loss`: minus the mean pixel cross-entropy (the global loss-threshold attack's statistic).
- `calibrated_loss`: the canary's loss under a reference model that never saw any canary minus its loss under
  the audited model (difficulty calibration, Watson et al. ICLR 2022; the cheapest reference attack): a hard
  image has a high loss under both, so what is left is what training on it changed. The reference must be
  trained with independent randomness (another seed): DP's guarantee holds over noise the auditor does not
  know, and a reference sharing the audited model's noise could cancel it.
Both are functions of released outputs and public labels only, never of the inclusion draw.

Canaries of different kinds live on different scales (a permuted canary's loss is several times a natural
one's), so ranking them together would spend the "in" guesses on one kind and the "out" guesses on the
other. `within_kind` puts each kind on a common scale (minus its median, over its median absolute
deviation, over all of that kind's canaries): a function of the outputs and the public kinds, and monotone
within a kind, so each kind's own ranking is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.attacks.base import Observed
from benchmark.attacks.components.loss_threshold import image_statistic
from benchmark.attacks.statistics import mean_pixel_loss
from benchmark.errors import SegleakError
from benchmark.models.release import Released

SCORES = ("loss", "calibrated_loss")
NEEDS_REFERENCE = ("calibrated_loss",)


def canary_losses(released: Released, ids: Sequence[str]) -> np.ndarray:
    """Mean pixel cross-entropy of each canary of `ids` (in that order) under a release."""
    return image_statistic(Observed(released.select(list(ids))), mean_pixel_loss)


def canary_scores(names: Sequence[str], audited: Released, reference: Released | None,
                  ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Each named score of the canaries `ids`, in that order."""
    loss = canary_losses(audited, ids)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "loss":
            out[name] = -loss
        elif name == "calibrated_loss":
            if reference is None:
                raise SegleakError("the calibrated_loss audit score needs a reference model's outputs")
            out[name] = canary_losses(reference, ids) - loss
        else:
            raise SegleakError(f"unknown audit score {name!r} (known: {', '.join(SCORES)})")
    return out


def within_kind(scores: dict[str, np.ndarray], kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Each score centred on its kind's median and scaled by its kind's median absolute deviation."""
    kinds = np.asarray(kinds)
    out = {}
    for name, values in scores.items():
        scaled = np.empty_like(values, dtype=np.float64)
        for kind in np.unique(kinds):
            mask = kinds == kind
            median = np.median(values[mask])
            spread = np.median(np.abs(values[mask] - median))
            scaled[mask] = (values[mask] - median) / (spread if spread > 0 else 1.0)
        out[name] = scaled
    return out
