"""Attack input representations built from released posteriors and the query's ground truth.

All functions take `probs [B,C,H,W]` (rows sum to 1 over C) and `labels [B,H,W]` (int, `ignore_index` =
unlabelled) and are vectorised with gather / one_hot: no per-pixel or per-class Python loops.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from benchmark.errors import SegleakError

EPS = 1e-12  # probabilities are clipped here before the log, so -log p_y <= 27.6
HARD_SLM_SCALE = 50.0  # the authors' code divides the SLM of argmax (one-hot) outputs by 50


def label_mask(probs: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Validate shapes; return the labelled-pixel mask and labels with ignored ones set to 0 (for gather)."""
    if probs.dim() != 4 or labels.shape != (probs.shape[0], *probs.shape[2:]):
        raise SegleakError(
            f"expected probs [B,C,H,W] and labels [B,H,W], got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    valid = labels != ignore_index
    safe = labels.long().masked_fill(~valid, 0)
    if safe.numel():
        low, high = torch.aminmax(safe)
        if low < 0 or high >= probs.shape[1]:
            raise SegleakError(f"labels must lie in [0, {probs.shape[1]}) or equal ignore_index={ignore_index}")
    return valid, safe


def structured_loss_map(probs: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Per-pixel cross-entropy `-log(max(p_y, EPS))` `[B,1,H,W]`, 0 at ignored pixels (the paper's SLM)."""
    valid, safe = label_mask(probs, labels, ignore_index)
    loss = probs.gather(1, safe.unsqueeze(1))  # a fresh tensor: the chain below works in place on it
    return loss.clamp_min_(EPS).log_().neg_().masked_fill_(~valid.unsqueeze(1), 0.0)


def concatenation(probs: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Posteriors stacked with the one-hot ground truth `[B,2C,H,W]`; ignored pixels: all-zero one-hot."""
    valid, safe = label_mask(probs, labels, ignore_index)
    b, c, h, w = probs.shape
    # one zeroed output buffer, the one-hot written by a single scatter of each pixel's label (1 where
    # labelled): no [B,C,H,W] comparison mask, no int64 one-hot, no concatenation copy
    out = probs.new_zeros(b, 2 * c, h, w)
    out[:, :c] = probs
    return out.scatter_(1, (safe + c).unsqueeze(1), valid.unsqueeze(1).to(probs.dtype))


def posterior_only(probs: Tensor, labels: Tensor | None = None, ignore_index: int = 255) -> Tensor:
    """The posterior map itself `[B,C,H,W]`: the weakest baseline, it ignores the ground truth."""
    return probs


REPRESENTATIONS: dict[str, Callable[..., Tensor]] = {
    "slm": structured_loss_map,
    "concat": concatenation,
    "posterior": posterior_only,
}


def representation(
    name: str, probs: Tensor, labels: Tensor, *, hard: bool = False, ignore_index: int = 255
) -> Tensor:
    """Build representation `name`; `hard=True` (argmax-defended outputs) scales the SLM by 1/50.

    On one-hot outputs the SLM is 0 or -log(EPS) ~ 27.6; the scaling keeps attack inputs small, as in
    the authors' code. The other representations are already in [0, 1].
    """
    if name not in REPRESENTATIONS:
        raise SegleakError(f"unknown representation {name!r}; known: {sorted(REPRESENTATIONS)}")
    rep = REPRESENTATIONS[name](probs, labels, ignore_index=ignore_index)
    if hard and name == "slm":
        rep = rep / HARD_SLM_SCALE
    return rep


def representation_channels(name: str, num_classes: int) -> int:
    """Input channels of representation `name`, to size the attack network."""
    channels = {"slm": 1, "concat": 2 * num_classes, "posterior": num_classes}
    if name not in channels:
        raise SegleakError(f"unknown representation {name!r}; known: {sorted(channels)}")
    return channels[name]
