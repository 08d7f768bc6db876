"""DP-SGD: a private step vs a plain one on the same GN model and batch, in time and in peak memory."""

from __future__ import annotations

import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from ray_jobs.measure.perf.common import NUM_CLASSES, Row, Sizes, interleaved, torch_threads
from ray_jobs.measure.perf.training import RandomScenes


def make_stepper(private: bool, arch: str, data: RandomScenes, batch: int) -> Callable[[], None]:
    """One training step of the GN model of `arch` (as train_model builds it for DP), private or not."""
    from benchmark.defenses import build_defense
    from benchmark.models import dp
    from benchmark.models.lightning_module import SegmentationModule

    torch.manual_seed(0)
    defense = build_defense("dp_sgd", {"noise_multiplier": 1.0, "max_grad_norm": 1.0})  # the GN model
    module = SegmentationModule(arch, defense, num_classes=NUM_CLASSES, optimizer="adamw", lr=1e-3, eval_names=())
    if private:
        dp.prepare_for_dp(module.net)  # before the optimiser: it may replace parameters
    optimizer = module.build_optimizer()
    if private:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.images, data.labels), batch_size=batch)
        wrapped = dp.make_private(module.net, optimizer, loader, max_grad_norm=1.0, noise_multiplier=1.0,
                                  delta=1e-5, epochs=1)
        module.net, optimizer = wrapped.net, wrapped.optimizer
    images, labels = data.images[:batch], data.labels[:batch]

    def step() -> None:
        optimizer.zero_grad()
        module.per_image_loss(module.outputs(images), labels).mean().backward()
        optimizer.step()

    return step


def _status_mib(field: str) -> float:
    """A `VmRSS`/`VmHWM` line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def dp_memory_worker(private: bool, arch: str, hw: tuple[int, int], batch: int, steps: int) -> dict[str, float]:
    """In a fresh process: RSS before the steps and its peak during them, in MiB (tracemalloc misses torch).

    The peak is reset after set-up (`clear_refs` 5, Linux >= 4.0) so the imports' own high-water mark does not
    hide what the steps need; without it the process-lifetime peak (`ru_maxrss`) is all there is.
    """
    torch.set_num_threads(1)
    step = make_stepper(private, arch, RandomScenes(batch, hw), batch)
    before = _status_mib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    for _ in range(steps):
        step()
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mib": peak, "before_steps_mib": before, "step_growth_mib": peak - before, "peak_reset": reset}


def dp_memory(sizes: Sizes, arch: str, isolate: bool) -> dict[str, dict[str, float]]:
    """Peak RSS of plain and DP steps, each in a fresh process (`isolate`), or here in turn (quick: no imports)."""
    from ray_jobs.measure.perf import dp  # by module name, which a spawned process can import

    variants = {"plain": False, "dp": True}
    args = (arch, sizes.train_hw, sizes.train_batch, max(2, sizes.dp_steps // 2))
    if not isolate:
        return {name: dp_memory_worker(private, *args) for name, private in variants.items()}
    with ProcessPoolExecutor(2, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {name: pool.submit(dp.dp_memory_worker, private, *args) for name, private in variants.items()}
        return {name: f.result() for name, f in futures.items()}


def bench_dp(sizes: Sizes, isolate: bool, arch: str = "pspnet_tiny") -> dict[str, Any]:
    """DP-SGD vs plain step on the same GN model and batch: interleaved time, then peak RSS of each."""
    data = RandomScenes(sizes.train_batch, sizes.train_hw)
    with torch_threads(1):
        t = interleaved({"plain": make_stepper(False, arch, data, sizes.train_batch),
                         "dp": make_stepper(True, arch, data, sizes.train_batch)}, sizes.dp_steps)
    mem = dp_memory(sizes, arch, isolate)
    return {"arch": arch, "norm": "GN (both)", "memory_in_fresh_processes": isolate, "image_size": list(sizes.train_hw), "batch": sizes.train_batch,
            "grad_sample_mode": "ew", "plain_step_s": t["plain"], "dp_step_s": t["dp"], "time_ratio": t["dp"] / t["plain"],
            "memory": mem, "peak_rss_ratio": mem["dp"]["peak_rss_mib"] / mem["plain"]["peak_rss_mib"]}


def dp_rows(dpr: dict[str, Any]) -> list[Row]:
    return [
        Row("DP-SGD step vs plain step (GN, same batch)",
            f"{dpr['dp_step_s'] * 1e3:.0f} vs {dpr['plain_step_s'] * 1e3:.0f} ms ({dpr['time_ratio']:.2f}x)", "report", "info"),
        Row("DP-SGD peak RSS vs plain (step growth)",
            f"{dpr['memory']['dp']['peak_rss_mib']:.0f} vs {dpr['memory']['plain']['peak_rss_mib']:.0f} MiB "
            f"({dpr['peak_rss_ratio']:.2f}x; steps add {dpr['memory']['dp']['step_growth_mib']:.0f} vs "
            f"{dpr['memory']['plain']['step_growth_mib']:.0f} MiB)", "report", "info"),
    ]

