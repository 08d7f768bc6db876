"""Membership signals of an image for the reference-model attacks: one value per image, or one per part of it.

A signal averages a per-pixel quantity of the ground-truth class over a group of labelled pixels:
- "logit": LiRA's logit-scaled confidence log p_y - log(1 - p_y) (Carlini et al. 2022: close to Gaussian
  across models, which the per-example Gaussians need);
- "log_prob": log p_y, minus the pixel's cross-entropy (RMIA's Pr(x|theta) = exp of its image mean, the
  geometric mean of the pixels' p_y; the calibrated loss reads its negative).
Groups: "image" (one value per image), "class" (one per class present with >= MIN_PIXELS pixels) or "region"
(an r x r grid of the map). Absent groups are NaN. The pixels of one group are ONE observation: the Gaussian
models of the attacks are fitted across models, never across pixels.

Label-only releases (argmax, top-1) carry only whether each pixel is right, so a group's value is computed
from its smoothed pixel accuracy a = (right + 1/2) / (n + 1): logit(a) or log(a). The attacks then work on
what is released instead of reading the one-hot map's arbitrary floor (log 1e-30) as a confidence.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.attacks.features import MAX_LOSS, label_mask
from benchmark.data.labels import IGNORE_INDEX
from benchmark.errors import SegleakError
from benchmark.models.release import Released

KINDS = ("logit", "log_prob")
GROUPS = ("image", "class", "region")
MIN_PIXELS = 4  # a class or region with fewer labelled pixels is left out of an image's vector
ONE = -(2.0**-24)  # log p is capped here: float16's resolution next to p = 1 (as statistics.logit_confidence)


def _group_index(labels: torch.Tensor, valid: torch.Tensor, groups: str, num_classes: int,
                 regions: int) -> tuple[torch.Tensor, int]:
    """Each pixel's group `[B,H,W]` (long) and the number of groups."""
    if groups == "image":
        return torch.zeros_like(labels), 1
    if groups == "class":
        return labels, num_classes
    h, w = labels.shape[-2:]
    if regions < 1 or regions > min(h, w):
        raise SegleakError(f"regions={regions}: a {h}x{w} map holds 1 to {min(h, w)} regions per side")
    rows = torch.arange(h) * regions // h
    cols = torch.arange(w) * regions // w
    return (rows[:, None] * regions + cols[None, :]).expand_as(labels), regions * regions


def group_signals(released: Released, kind: str = "logit", groups: str = "image", regions: int = 4,
                  ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The signal of every image `[N]` (groups="image") or of every group of every image `[N, d]` (NaN where a
    group has fewer than MIN_PIXELS labelled pixels), float64. An image with no usable group is an error."""
    if kind not in KINDS or groups not in GROUPS:
        raise SegleakError(f"unknown signal {kind!r} over {groups!r} (known: {KINDS} over {GROUPS})")
    log_probs = released.log_probs.float()
    valid, safe = label_mask(log_probs, released.labels.long(), ignore_index)
    if released.label_only:
        value = (log_probs.argmax(dim=1) == safe).double()
    else:
        log_p = log_probs.gather(1, safe.unsqueeze(1))[:, 0].double().clamp(-MAX_LOSS, ONE)
        value = log_p - torch.log(-torch.expm1(log_p)) if kind == "logit" else log_p
    index, d = _group_index(safe, valid, groups, log_probs.shape[1], regions)
    flat_index = index.reshape(len(index), -1)
    weight = valid.reshape(len(valid), -1).double()
    sums = torch.zeros(len(index), d, dtype=torch.float64).scatter_add_(1, flat_index, value.reshape(len(value), -1) * weight)
    counts = torch.zeros(len(index), d, dtype=torch.float64).scatter_add_(1, flat_index, weight)
    if released.label_only:
        accuracy = (sums + 0.5) / (counts + 1.0)
        out = torch.log(accuracy) - (torch.log1p(-accuracy) if kind == "logit" else 0.0)
    else:
        out = sums / counts.clamp_min(1.0)
    out = out.numpy()
    out[(counts < (1 if groups == "image" else MIN_PIXELS)).numpy()] = np.nan
    empty = np.isnan(out).all(axis=1)
    if empty.any():
        raise SegleakError(f"image {released.ids[int(np.flatnonzero(empty)[0])]!r} has no labelled "
                           f"{'pixel' if groups == 'image' else f'{groups} with >= {MIN_PIXELS} pixels'}: "
                           "its signal is undefined")
    return out[:, 0] if groups == "image" else out
