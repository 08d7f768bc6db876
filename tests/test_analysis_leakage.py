"""Leakage maps: the per-class loss gap against a hand computation, and the figure on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.leakage import per_class_loss_gap, plot_leakage_map

CLASSES = ["road", "car", "sky", "person"]


def _maps() -> tuple[np.ndarray, ...]:
    member_labels = np.array([[[0, 0, 1], [255, 1, 2]]])
    member_loss = np.array([[[0.1, 0.3, 0.5], [9.0, 0.7, 0.2]]])
    nonmember_labels = np.array([[[0, 1, 1], [0, 255, 3]]])
    nonmember_loss = np.array([[[0.4, 1.0, 2.0], [0.7, 9.0, 1.5]]])
    return member_loss, member_labels, nonmember_loss, nonmember_labels


def test_per_class_loss_gap_matches_a_hand_computation() -> None:
    gap = per_class_loss_gap(*_maps(), n_classes=len(CLASSES))
    # road: non-members (0.4 + 0.7) / 2 - members (0.1 + 0.3) / 2; car: 1.5 - 0.6; sky, person: absent in one group
    np.testing.assert_allclose(gap[:2], [0.55 - 0.2, 1.5 - 0.6])
    assert np.isnan(gap[2]) and np.isnan(gap[3])


def test_leakage_map_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), (3, 24, 48))
    labels[:, :3] = 255
    member_loss = rng.gamma(1.0, 0.2, labels.shape)
    nonmember_loss = member_loss + 0.5 * (labels == 1)
    out = plot_leakage_map(member_loss, labels, nonmember_loss, labels, CLASSES, tmp_path / "leak" / "map.png", n_images=2)
    with Image.open(out) as image:
        assert image.width >= 800 and image.height >= 800
    gap = per_class_loss_gap(member_loss, labels, nonmember_loss, labels, len(CLASSES))
    assert np.argmax(gap) == 1 and gap[1] == pytest.approx(0.5)


def test_leakage_map_needs_images(tmp_path: Path) -> None:
    empty = np.zeros((0, 4, 4))
    with pytest.raises(ValueError, match="at least one"):
        plot_leakage_map(empty, empty, empty, empty, CLASSES, tmp_path / "x.png")
