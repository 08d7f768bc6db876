"""Leakage maps: where in an image, and in which classes, the victim's loss separates members from
non-members: the evidence a structured-loss attack reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps

from analysis.figures import new_figure
from benchmark.data.labels import IGNORE_INDEX


def _class_mean_loss(loss: np.ndarray, labels: np.ndarray, n_classes: int, ignore_index: int) -> np.ndarray:
    """Mean loss per class over every valid pixel of every image (NaN for a class with no pixel)."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < n_classes)
    classes = labels[valid].astype(np.int64)
    totals = np.bincount(classes, weights=loss[valid].astype(np.float64), minlength=n_classes)
    counts = np.bincount(classes, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def per_class_loss_gap(
    member_loss: np.ndarray, member_labels: np.ndarray, nonmember_loss: np.ndarray, nonmember_labels: np.ndarray,
    n_classes: int, ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Per class: mean non-member loss minus mean member loss, pooled over pixels; a large positive gap
    means the victim fits its training pixels of that class much better: that class leaks. NaN where a class
    is absent from either group."""
    return _class_mean_loss(nonmember_loss, nonmember_labels, n_classes, ignore_index) - _class_mean_loss(
        member_loss, member_labels, n_classes, ignore_index
    )


def plot_leakage_map(
    member_loss: np.ndarray, member_labels: np.ndarray, nonmember_loss: np.ndarray, nonmember_labels: np.ndarray,
    class_names: Sequence[str], out: Path, n_images: int = 3, ignore_index: int = IGNORE_INDEX,
) -> Path:
    """Member vs non-member structured-loss maps for a few images (one shared colour scale; ignored
    pixels grey), above a bar chart of the per-class loss gap, sorted so the leakiest class comes first."""
    n_shown = min(n_images, len(member_loss), len(nonmember_loss))
    if n_shown == 0:
        raise ValueError("plot_leakage_map needs at least one member and one non-member image")
    shown = [np.ma.masked_where(labels[:n_shown] == ignore_index, loss[:n_shown])
             for loss, labels in ((member_loss, member_labels), (nonmember_loss, nonmember_labels))]
    valid = np.concatenate([s.compressed() for s in shown])
    vmax = float(np.percentile(valid, 99)) if valid.size else 1.0
    gap = per_class_loss_gap(member_loss, member_labels, nonmember_loss, nonmember_labels, len(class_names), ignore_index)

    fig = new_figure(9, 2.4 * n_shown + 3.6)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.4 * n_shown, 3.6])
    axes = top.subplots(n_shown, 2, squeeze=False)
    cmap = colormaps["magma"].with_extremes(bad="0.75")
    image = None
    for i in range(n_shown):
        for j, (group, maps) in enumerate(zip(("member", "non-member"), shown)):
            image = axes[i, j].imshow(maps[i], cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            axes[i, j].set_title(f"{group} image {i + 1}: mean loss {maps[i].mean():.3f}", fontsize=9)
            axes[i, j].set_axis_off()
    top.colorbar(image, ax=axes, label="per-pixel loss −log p(true class); grey = ignored", shrink=0.9)
    top.suptitle("Victim's structured loss: training members vs non-members (shared colour scale)")

    ax = bottom.subplots()
    present = np.flatnonzero(~np.isnan(gap))
    order = present[np.argsort(-gap[present])]
    colours = ["tab:red" if g > 0 else "tab:blue" for g in gap[order]]
    ax.bar(range(len(order)), gap[order], color=colours)
    ax.set_xticks(range(len(order)), [class_names[k] for k in order], rotation=45, ha="right", fontsize=8)
    ax.axhline(0, c="k", lw=0.8)
    ax.set_ylabel("mean loss gap\n(non-member − member)")
    ax.set_title("Which classes leak most (red: members fit better; classes absent from either group omitted)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return out
