"""Per-image scalar statistics of released outputs, for threshold attacks and per-example attacks
(LiRA, RMIA). Each takes log-posteriors `[B,C,H,W]` and returns a float64 tensor `[B]`.

Pixels of one image are strongly correlated: these statistics summarise an image as ONE observation;
never treat its pixels as independent tests. An image with no labelled pixel has no statistic: it
gets NaN (0/0), and callers must drop it (`membership_metrics` refuses NaN scores).
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.attacks.features import MAX_LOSS, label_mask, loss_map
from benchmark.data.labels import IGNORE_INDEX


def valid_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of `values [B,H,W]` over valid pixels per image, in float64; NaN when none is valid."""
    valid = valid.double()
    return (values.double() * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2))


def mean_pixel_loss(log_probs: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean per-pixel cross-entropy over labelled pixels (the global loss-threshold attack's statistic)."""
    valid, _ = label_mask(log_probs, labels, ignore_index)
    return valid_mean(loss_map(log_probs, labels, ignore_index)[:, 0], valid)


def pixel_accuracy(log_probs: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Fraction of labelled pixels whose top-1 class is right: needs only labels, so it survives argmax."""
    valid, safe = label_mask(log_probs, labels, ignore_index)
    return valid_mean((log_probs.argmax(dim=1) == safe).double(), valid)


def logit_confidence(log_probs: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean over labelled pixels of log p_y - log(1 - p_y), LiRA's statistic (approximately Gaussian).

    From the log-posterior in float64: log(1 - p) = log(-expm1(log p)), exact for p near 1 as for p near 0.
    log p is capped at -2^-24, the release's resolution next to p = 1 (float16's smallest step), so a
    pixel stored as exactly p = 1 counts as logit 16.6, not infinity.
    """
    valid, safe = label_mask(log_probs, labels, ignore_index)
    log_p = log_probs.gather(1, safe.unsqueeze(1))[:, 0].double().clamp(-MAX_LOSS, -(2.0**-24))
    return valid_mean(log_p - torch.log(-torch.expm1(log_p)), valid)
