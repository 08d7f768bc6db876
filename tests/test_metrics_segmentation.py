"""Confusion matrix and mIoU on a hand-made case."""

import math

import pytest
import torch

from benchmark.errors import SegleakError
from benchmark.metrics.segmentation import confusion_matrix, miou, per_class_iou


def test_confusion_and_miou_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1], [1, 255, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)  # the ignored pixel (pred 2) is not counted
    iou = per_class_iou(cm)
    # class 0: tp 1, union 2+3-1=4; class 1: tp 2, union 3+3-2=4; class 2: tp 1, union 2+1-1=2; class 3 absent
    assert iou[:3].tolist() == pytest.approx([1 / 4, 2 / 4, 1 / 2])
    assert math.isnan(iou[3])
    assert miou(cm) == pytest.approx((1 / 4 + 2 / 4 + 1 / 2) / 3)


def test_confusion_accumulates_and_validates() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 6, 6), generator=g)
    pred = torch.randint(0, 5, (2, 6, 6), generator=g)
    both = confusion_matrix(pred, target, 5)
    assert torch.equal(
        both, confusion_matrix(pred[:1], target[:1], 5) + confusion_matrix(pred[1:], target[1:], 5)
    )
    assert both.sum() == target.numel()
    assert miou(confusion_matrix(target, target, 5)) == 1.0
    with pytest.raises(SegleakError):
        confusion_matrix(pred, torch.full_like(target, 7), 5)
