"""Attack input representations built from released outputs and the query's ground truth.

The release holds log-posteriors (`benchmark.models.release`); the structured loss map is read from them
directly, so a member pixel's loss of 1e-5 stays 1e-5 and is never rounded through a float16 probability.
`structured_loss_map` (the public API) takes probabilities and goes through the same code.
All functions are vectorised with gather / scatter: no per-pixel or per-class Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from benchmark.data.labels import IGNORE_INDEX
from benchmark.errors import SegleakError

EPS = 1e-30  # probabilities are clipped here before the log, as in the authors' code: -log p_y <= 69.08
MAX_LOSS = -math.log(EPS)
HARD_SLM_SCALE = 50.0  # the authors' code divides the SLM of argmax (one-hot) outputs by 50


def label_mask(scores: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Validate shapes; return the labelled-pixel mask and labels with ignored ones set to 0 (for gather)."""
    if scores.dim() != 4 or labels.shape != (scores.shape[0], *scores.shape[2:]):
        raise SegleakError(
            f"expected posteriors [B,C,H,W] and labels [B,H,W], got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    valid = labels != ignore_index
    safe = labels.long().masked_fill(~valid, 0)
    if safe.numel():
        low, high = torch.aminmax(safe)
        if low < 0 or high >= scores.shape[1]:
            raise SegleakError(f"labels must lie in [0, {scores.shape[1]}) or equal ignore_index={ignore_index}")
    return valid, safe


def _label_scores(scores: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Each pixel's score of its label `[B,1,H,W]` as a fresh float32 tensor (the callers work in place on it),
    and the labelled-pixel mask `[B,1,H,W]`."""
    valid, safe = label_mask(scores, labels, ignore_index)
    return scores.gather(1, safe.unsqueeze(1)).float(), valid.unsqueeze(1)


def loss_map(log_probs: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """`-log p_y` per pixel `[B,1,H,W]` from log-posteriors of any float dtype (the release's float16: only the
    gathered channel is converted, exactly, to float32), capped at -log(EPS), 0 where ignored."""
    loss, valid = _label_scores(log_probs, labels, ignore_index)
    return loss.neg_().clamp_(0.0, MAX_LOSS).masked_fill_(~valid, 0.0)


def structured_loss_map(probs: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-pixel cross-entropy `-log(max(p_y, EPS))` `[B,1,H,W]`, 0 at ignored pixels (the paper's SLM).

    The label's probability is gathered before the log (one channel of C takes it), in float32 whatever `probs`'
    dtype, so half-precision input never gives log(0) = -inf.
    """
    p, valid = _label_scores(probs, labels, ignore_index)
    return p.clamp_(EPS, 1.0).log_().neg_().masked_fill_(~valid, 0.0)


def concatenation(probs: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Posteriors stacked with the one-hot ground truth `[B,2C,H,W]`; ignored pixels: all-zero one-hot."""
    valid, safe = label_mask(probs, labels, ignore_index)
    b, c, h, w = probs.shape
    # one zeroed output buffer, the one-hot written by a single scatter of each pixel's label (1 where
    # labelled): no [B,C,H,W] comparison mask, no int64 one-hot, no concatenation copy
    out = probs.new_zeros(b, 2 * c, h, w, dtype=torch.float32)
    out[:, :c] = probs
    return out.scatter_(1, (safe + c).unsqueeze(1), valid.unsqueeze(1).to(out.dtype))


def posterior_only(probs: Tensor, labels: Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The posterior map itself `[B,C,H,W]` (float32): the weakest baseline, it ignores the ground truth."""
    return probs.float()


# name -> (function, whether it reads log-posteriors (True) or probabilities)
REPRESENTATIONS: dict[str, tuple[Callable[..., Tensor], bool]] = {
    "slm": (loss_map, True),
    "concat": (concatenation, False),
    "posterior": (posterior_only, False),
}


def representation(name: str, log_probs: Tensor, labels: Tensor, *, hard: bool = False,
                   ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Build representation `name` from log-posteriors; `hard=True` (label-only outputs) scales the SLM by 1/50.

    On one-hot outputs the SLM is 0 or -log(EPS) = 69.08; the scaling keeps attack inputs small, as in the
    authors' code. The other representations are already in [0, 1].
    """
    if name not in REPRESENTATIONS:
        raise SegleakError(f"unknown representation {name!r}; known: {sorted(REPRESENTATIONS)}")
    function, reads_log = REPRESENTATIONS[name]
    rep = function(log_probs if reads_log else log_probs.float().exp(), labels, ignore_index=ignore_index)
    if hard and name == "slm":
        rep = rep / HARD_SLM_SCALE
    return rep
