"""Output-side defenses: transformations of the posterior map `[B,C,H,W]` that the victim releases.

Every defense returns a valid posterior map (non-negative, sums to 1 over C), so attacks and utility
metrics run unchanged on defended outputs. None of them changes what the victim computes, only what it
releases; `argmax` and `topk(k=1)` keep the top-1 class, so the victim's mIoU is unchanged by them.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from benchmark.errors import SegleakError

GAUSSIAN_FLOOR = 1e-6  # clamp value after adding noise, as in the paper's released code
_LOG_FLOOR = 1e-30  # keeps log(0) finite in `temperature`; far below any float32 posterior that matters


def argmax(probs: Tensor) -> Tensor:
    """Release only the top-1 label (as one-hot maps) so attacks see label-only outputs."""
    top = probs.argmax(dim=1)
    return torch.nn.functional.one_hot(top, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)


def gaussian(probs: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Add i.i.d. N(0, sigma^2) to every posterior value, clamp at 1e-6 and renormalise over classes.

    Pass a seeded `generator` (on the same device as `probs`) for reproducible noise.
    """
    noise = torch.randn(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device)
    noisy = (probs + sigma * noise).clamp_min(GAUSSIAN_FLOOR)
    return noisy / noisy.sum(dim=1, keepdim=True)


def temperature(probs: Tensor, t: float) -> Tensor:
    """Re-soften the posterior as softmax(log p / t): t > 1 flattens it, t = 1 is a no-op."""
    return torch.softmax(probs.clamp_min(_LOG_FLOOR).log() / t, dim=1)


def topk(probs: Tensor, k: int) -> Tensor:
    """Release only the k largest posteriors per pixel (renormalised), hiding the tail of the distribution."""
    values, indices = probs.topk(k, dim=1)
    kept = torch.zeros_like(probs).scatter_(1, indices, values)
    return kept / kept.sum(dim=1, keepdim=True)


def _none(probs: Tensor) -> Tensor:
    return probs


OUTPUT_DEFENSES: dict[str, Callable[..., Tensor]] = {
    "none": _none,
    "argmax": argmax,
    "gaussian": gaussian,
    "temperature": temperature,
    "topk": topk,
}
OUTPUT_DEFENSE_PARAMS: dict[str, tuple[str, ...]] = {
    "none": (),
    "argmax": (),
    "gaussian": ("sigma",),
    "temperature": ("t",),
    "topk": ("k",),
}


def check_output_defense_params(name: str, params: dict, num_classes: int) -> None:
    expected = set(OUTPUT_DEFENSE_PARAMS[name])
    if set(params) != expected:
        raise SegleakError(
            f"output defense {name!r} takes parameters {sorted(expected)}, got {sorted(params)}"
        )
    if name == "gaussian" and not params["sigma"] >= 0:
        raise SegleakError(f"gaussian defense needs sigma >= 0, got {params['sigma']}")
    if name == "temperature" and not params["t"] > 0:
        raise SegleakError(f"temperature defense needs t > 0, got {params['t']}")
    if name == "topk":
        k = params["k"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
            raise SegleakError(f"topk defense needs an integer 1 <= k <= {num_classes}, got {k!r}")


def apply_output_defense(
    name: str, probs: Tensor, params: dict, generator: torch.Generator | None = None
) -> Tensor:
    """Apply the output defense `name` with its `params` (one place for validation, used by the grid)."""
    if name not in OUTPUT_DEFENSES:
        raise SegleakError(f"unknown output defense {name!r}; known: {sorted(OUTPUT_DEFENSES)}")
    check_output_defense_params(name, params, probs.shape[1])
    if name == "gaussian":
        return gaussian(probs, params["sigma"], generator=generator)
    return OUTPUT_DEFENSES[name](probs, **params)


def is_hard(name: str) -> bool:
    """True when the defense releases label-only outputs (attacks then scale the SLM, see features.py)."""
    if name not in OUTPUT_DEFENSES:
        raise SegleakError(f"unknown output defense {name!r}; known: {sorted(OUTPUT_DEFENSES)}")
    return name == "argmax"
