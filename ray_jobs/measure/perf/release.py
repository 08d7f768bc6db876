"""Released outputs: bytes per image on disk (float16 log-posteriors, compressed) vs raw float32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ray_jobs.measure.perf.common import NUM_CLASSES, Row, verdict


def make_release(path: Path, n: int = 4, hw: tuple[int, int] = (8, 16)) -> Path:
    """A small release of smooth synthetic posteriors (when no smoke run gave real ones)."""
    from benchmark.models.release import Released, save_released

    gen = torch.Generator().manual_seed(0)
    logits = torch.nn.functional.interpolate(torch.randn(n, NUM_CLASSES, hw[0] // 4, hw[1] // 4, generator=gen) * 4,
                                             size=hw, mode="bilinear", align_corners=False)
    log_probs = torch.log_softmax(logits, 1)
    save_released(Released([f"img{i}" for i in range(n)], log_probs.half(), log_probs.argmax(1).to(torch.uint8)), path)
    return path


def bench_release(paths: list[Path]) -> dict[str, Any]:
    """Bytes per image on disk (float16 log-posteriors in a compressed npz, ids and labels included) vs raw float32."""
    from benchmark.models.release import load_released

    stored = raw = images = 0
    for path in paths:
        released = load_released(path)
        stored += path.stat().st_size
        raw += released.log_probs.numel() * 4
        images += len(released.ids)
    shape = list(load_released(paths[0]).log_probs.shape[1:])
    return {"files": len(paths), "images": images, "map_shape": shape, "stored_bytes_per_image": stored / images,
            "raw_float32_bytes_per_image": raw / images, "compression": raw / stored}


def release_rows(rel: dict[str, Any]) -> list[Row]:
    return [Row("released outputs: bytes/image stored vs raw f32",
                f"{rel['stored_bytes_per_image']:.0f} vs {rel['raw_float32_bytes_per_image']:.0f} "
                f"({rel['compression']:.1f}x smaller)", "< raw f32", verdict(rel["compression"] > 1))]
