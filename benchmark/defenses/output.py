"""Output-side defenses as functions of a posterior map `[B,C,H,W]`, in probability space (the public API),
and the log-space helpers the registered output defenses (`benchmark.defenses.components`) are built on.

Every probability-space function returns a valid posterior map (non-negative, sums to 1 over C). None of
them changes what the victim computes, only what it releases; `argmax` and `topk(k=1)` keep the top-1
class, so the victim's mIoU is unchanged by them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.defenses.base import LOG_FLOOR

GAUSSIAN_FLOOR = 1e-6  # clamp value after adding noise, as in the paper's released code


def argmax(probs: Tensor) -> Tensor:
    """Release only the top-1 label (as one-hot maps) so attacks see label-only outputs."""
    top = probs.argmax(dim=1)
    return F.one_hot(top, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)


def gaussian(probs: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Add i.i.d. N(0, sigma^2) to every posterior value, clamp at 1e-6 and renormalise over classes.

    Pass a seeded `generator` (on the same device as `probs`) for reproducible noise.
    """
    noise = torch.randn(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device)
    noisy = (probs + sigma * noise).clamp_min(GAUSSIAN_FLOOR)
    return noisy / noisy.sum(dim=1, keepdim=True)


def temperature(probs: Tensor, t: float) -> Tensor:
    """Re-soften the posterior as softmax(log p / t): t > 1 flattens it, t = 1 is a no-op."""
    return torch.softmax(to_log(probs) / t, dim=1)


def topk(probs: Tensor, k: int) -> Tensor:
    """Release only the k largest posteriors per pixel (renormalised), hiding the tail of the distribution."""
    values, indices = probs.topk(k, dim=1)
    kept = torch.zeros_like(probs).scatter_(1, indices, values)
    return kept / kept.sum(dim=1, keepdim=True)


def to_log(probs: Tensor) -> Tensor:
    """log p, floored at LOG_FLOOR (p = 0 is released as 1e-30, as the authors clip)."""
    return probs.clamp_min(1e-30).log().clamp_min(LOG_FLOOR)


def log_one_hot(top: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Log of a one-hot map `[B,C,H,W]` of class indices `top [B,H,W]`: 0 at the class, LOG_FLOOR elsewhere."""
    out = torch.full((top.shape[0], num_classes, *top.shape[1:]), LOG_FLOOR, dtype=dtype, device=top.device)
    return out.scatter_(1, top.unsqueeze(1), 0.0)


def log_topk(log_probs: Tensor, k: int) -> Tensor:
    """`topk` in log space: the k largest renormalised by logsumexp, the others at LOG_FLOOR."""
    values, indices = log_probs.topk(k, dim=1)
    values = values - values.logsumexp(dim=1, keepdim=True)
    return torch.full_like(log_probs, LOG_FLOOR).scatter_(1, indices, values)
