"""Segmentation utility metrics (the victim's mIoU, to weigh what a defense costs)."""

import torch
from torch import Tensor

from benchmark.errors import SegleakError


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """`[C,C]` int64 counts, rows = true class, columns = predicted; ignored pixels are skipped.

    Accumulate it over batches (it adds up) and take mIoU once at the end, as mmseg does.
    """
    if pred.shape != target.shape:
        raise SegleakError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise SegleakError(f"classes must lie in [0, {num_classes}) (or be ignore_index={ignore_index})")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_iou(confusion: Tensor) -> Tensor:
    """IoU per class as float64 fractions; NaN for a class absent from both prediction and ground truth."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(dim=0) + c.sum(dim=1) - tp
    return tp / union  # 0/0 -> NaN marks classes with empty union


def miou(confusion: Tensor) -> float:
    """Mean IoU over classes with non-zero union (mmseg's nanmean), a fraction in [0, 1]; NaN if none."""
    return float(per_class_iou(confusion).nanmean())
