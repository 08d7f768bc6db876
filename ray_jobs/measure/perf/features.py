"""Attack features: segleak's vectorised structured-loss map and concatenation input vs the per-class loops of
the paper's released code, and vs one plain copy of the posteriors (the memory-bandwidth floor).

`slm` and `concat` time what the grid runs: `representation` on the release's float16 log-posteriors (the SLM
through `loss_map`, the concatenation after the `exp`); `slm_public` times the public `structured_loss_map` on
probabilities. The loops read the probabilities, as the authors' code does."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmark.attacks.features import EPS, concatenation, representation, structured_loss_map
from ray_jobs.measure.perf.common import IGNORE, NUM_CLASSES, Row, Sizes, interleaved, torch_threads, verdict


def loop_structured_loss_map(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The paper's released code's way: one boolean mask per class, `-log p_c` written where the label is c."""
    slm = np.zeros((probs.shape[0], 1, *probs.shape[2:]), dtype=probs.dtype)
    for c in range(probs.shape[1]):
        mask = labels == c
        slm[:, 0][mask] = -np.log(np.maximum(probs[:, c][mask], EPS))
    return slm


def loop_concatenation(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The per-class loop for the concatenation input: one one-hot plane per class, stacked after the posteriors."""
    onehot = np.zeros_like(probs)
    for c in range(probs.shape[1]):
        onehot[:, c] = labels == c
    return np.concatenate([probs, onehot], axis=1)


def random_posteriors(batch: int, hw: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax posteriors `[B,19,H,W]` and labels with about 5% ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(batch, NUM_CLASSES, *hw, generator=gen) * 3, dim=1)
    labels = torch.randint(0, NUM_CLASSES, (batch, *hw), generator=gen)
    labels[torch.rand(batch, *hw, generator=gen) < 0.05] = IGNORE
    return probs, labels


def check_features_equal(probs: torch.Tensor, labels: torch.Tensor, released: torch.Tensor) -> bool:
    """The loops and segleak's functions compute the same maps (so the timing compares equal work); the grid's
    path from the float16 `released` log-posteriors to the release's rounding."""
    p, y = probs.numpy(), labels.numpy()
    loop_slm, loop_concat = loop_structured_loss_map(p, y), loop_concatenation(p, y)
    return bool(
        np.allclose(loop_slm, structured_loss_map(probs, labels).numpy(), rtol=1e-5, atol=1e-6)
        and np.array_equal(loop_concat, concatenation(probs, labels).numpy())
        and np.allclose(loop_slm, representation("slm", released, labels).numpy(), rtol=2e-3, atol=1e-4)
        and np.allclose(loop_concat, representation("concat", released, labels).numpy(), rtol=2e-3, atol=1e-4)
    )


def bench_features(sizes: Sizes, default_threads: int) -> dict[str, Any]:
    """Vectorised features vs the per-class loop and vs one plain copy of the posteriors, at 1 and default threads."""
    probs, labels = random_posteriors(sizes.feature_batch, sizes.feature_hw)
    released = probs.log().half()  # as `benchmark.models.release` stores them
    p, y = probs.numpy(), labels.numpy()
    out: dict[str, Any] = {"shape": list(probs.shape), "bytes": probs.numel() * probs.element_size(),
                           "outputs_equal": check_features_equal(probs, labels, released)}
    for threads in sorted({1, default_threads}):
        with torch_threads(threads):
            t = interleaved({
                "loop_slm": lambda: loop_structured_loss_map(p, y),
                "slm": lambda: representation("slm", released, labels),
                "slm_public": lambda: structured_loss_map(probs, labels),
                "loop_concat": lambda: loop_concatenation(p, y),
                "concat": lambda: representation("concat", released, labels),
                "copy": probs.clone,
            }, sizes.feature_repeats)
        out[f"threads_{threads}"] = {
            "seconds": t,
            "gb_per_s": {k: out["bytes"] / v / 1e9 for k, v in t.items()},
            "speedup_slm": t["loop_slm"] / t["slm"], "speedup_concat": t["loop_concat"] / t["concat"],
            "speedup_slm_public": t["loop_slm"] / t["slm_public"],
            "copy_over_slm": t["copy"] / t["slm"], "copy_over_concat": t["copy"] / t["concat"],
        }
    return out


def feature_rows(res: dict[str, Any]) -> list[Row]:
    rows = [Row("features: loops == segleak (allclose)", str(res["outputs_equal"]), "True", verdict(res["outputs_equal"]))]
    for key in sorted(k for k in res if k.startswith("threads_")):
        r, n = res[key], key.split("_")[1]
        for feat in ("slm", "concat"):
            rows.append(Row(f"{feat} (grid's path) speed-up vs per-class loop ({n} thr)", f"{r[f'speedup_{feat}']:.1f}x",
                            ">= 5x", verdict(r[f"speedup_{feat}"] >= 5)))
            rows.append(Row(f"{feat} GB/s vs one copy ({n} thr)",
                            f"{r['gb_per_s'][feat]:.2f} vs {r['gb_per_s']['copy']:.2f} ({r[f'copy_over_{feat}']:.2f}x)",
                            ">= 1x copy", verdict(r[f"copy_over_{feat}"] >= 1)))
        rows.append(Row(f"structured_loss_map (public, probabilities) vs per-class loop ({n} thr)",
                        f"{r['speedup_slm_public']:.1f}x", "report", "info"))
    return rows

