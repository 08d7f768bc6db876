"""Per-image scalar statistics of released outputs, for threshold attacks and per-example attacks
(LiRA, RMIA). Each returns a float64 tensor `[B]`, vectorised over the batch.

Pixels of one image are strongly correlated: these statistics summarise an image as ONE observation;
never treat its pixels as independent tests. An image with no labelled pixel has no statistic: it
gets NaN (0/0), and callers must drop it (`membership_metrics` refuses NaN scores).
"""

import torch
from torch import Tensor

from benchmark.attacks.features import label_mask, structured_loss_map

_CONF_EPS = 1e-12  # p_y is clamped to [eps, 1-eps] (in float64) before the logit


def _valid_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of `values [B,H,W]` over valid pixels per image, in float64; NaN when none is valid."""
    valid = valid.double()
    return (values.double() * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2))


def mean_pixel_loss(probs: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean per-pixel cross-entropy over labelled pixels (the global loss-threshold attack's statistic)."""
    valid, _ = label_mask(probs, labels, ignore_index)
    return _valid_mean(structured_loss_map(probs, labels, ignore_index)[:, 0], valid)


def pixel_accuracy(probs: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Fraction of labelled pixels whose top-1 class is right: needs only labels, so it survives argmax."""
    valid, safe = label_mask(probs, labels, ignore_index)
    return _valid_mean((probs.argmax(dim=1) == safe).double(), valid)


def logit_confidence(probs: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean over labelled pixels of log p_y - log(1 - p_y), LiRA's statistic (approximately Gaussian)."""
    valid, safe = label_mask(probs, labels, ignore_index)
    p_y = probs.gather(1, safe.unsqueeze(1))[:, 0].double().clamp(_CONF_EPS, 1 - _CONF_EPS)
    return _valid_mean(p_y.log() - torch.log1p(-p_y), valid)
