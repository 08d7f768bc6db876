"""DP-SGD: a step of each mode (`ghost`: fast gradient clipping, `ew`: per-sample gradients materialised) and a
plain step on the same GN model and batch, in time and in peak memory."""

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

VARIANTS = ("ghost", "ew", "plain")  # a DP mode (benchmark.models.dp.MODES) or the plain step


def make_stepper(variant: str, arch: str, data: RandomScenes, batch: int) -> Callable[[], None]:
    """One training step of the GN model of `arch` (as train_model builds it for DP): DP-SGD in mode `variant`
    through the loss the trainer back-propagates (`PrivateTraining.loss`), or a plain step."""
    from benchmark.defenses import build_defense
    from benchmark.models import dp
    from benchmark.models.lightning_module import SegmentationModule

    torch.manual_seed(0)
    defense = build_defense("dp_sgd", {"noise_multiplier": 1.0, "max_grad_norm": 1.0})  # the GN model
    module = SegmentationModule(arch, defense, num_classes=NUM_CLASSES, optimizer="adamw", lr=1e-3, eval_names=())
    images, labels = data.images[:batch], data.labels[:batch]
    if variant == "plain":
        optimizer = module.build_optimizer()
        loss_of = torch.Tensor.mean
    else:
        dp.prepare_for_dp(module.net)  # before the optimiser: it may replace parameters
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.images, data.labels), batch_size=batch)
        private = dp.make_private(module.net, module.build_optimizer(), loader, max_grad_norm=1.0, noise_multiplier=1.0,
                                  delta=1e-5, epochs=1, mode=variant)
        module.use_private(private.net, private.optimizer)
        optimizer, loss_of = private.optimizer, private.loss

    def step() -> None:
        optimizer.zero_grad()
        loss_of(module.per_image_loss(module.outputs(images), labels)).backward()
        optimizer.step()

    return step


def _status_mib(field: str) -> float:
    """A `VmRSS`/`VmHWM` line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def dp_memory_worker(variant: str, arch: str, hw: tuple[int, int], batch: int, steps: int) -> dict[str, float]:
    """In a fresh process: RSS before the steps and its peak during them, in MiB (tracemalloc misses torch).

    The peak is reset after set-up (`clear_refs` 5, Linux >= 4.0) so the imports' own high-water mark does not
    hide what the steps need; without it the process-lifetime peak (`ru_maxrss`) is all there is.
    """
    torch.set_num_threads(1)
    step = make_stepper(variant, arch, RandomScenes(batch, hw), batch)
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


def dp_memory(sizes: Sizes, isolate: bool) -> dict[str, dict[str, float]]:
    """Peak RSS of each variant's steps, each in a fresh process (`isolate`), or here in turn (quick: no imports)."""
    from ray_jobs.measure.perf import dp  # by module name, which a spawned process can import

    args = (sizes.dp_arch, sizes.dp_hw, sizes.dp_batch, max(2, sizes.dp_steps // 2))
    if not isolate:
        return {v: dp_memory_worker(v, *args) for v in VARIANTS}
    # one process at a time: the figures are per process, and a quiet machine keeps the set-up short
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {v: pool.submit(dp.dp_memory_worker, v, *args) for v in VARIANTS}
        return {v: f.result() for v, f in futures.items()}


def bench_dp(sizes: Sizes, isolate: bool) -> dict[str, Any]:
    """The three variants on the same GN model and batch: interleaved step times, then each one's peak RSS."""
    data = RandomScenes(sizes.dp_batch, sizes.dp_hw)
    with torch_threads(1):
        steppers = {v: make_stepper(v, sizes.dp_arch, data, sizes.dp_batch) for v in VARIANTS}
        t = interleaved(steppers, sizes.dp_steps)
    del steppers
    mem = dp_memory(sizes, isolate)
    plain_t, plain_m = t["plain"], mem["plain"]["peak_rss_mib"]
    return {"arch": sizes.dp_arch, "norm": "GN (all)", "memory_in_fresh_processes": isolate,
            "image_size": list(sizes.dp_hw), "batch": sizes.dp_batch, "threads": 1, "step_s": t, "memory": mem,
            "time_ratio": {v: t[v] / plain_t for v in VARIANTS[:2]},
            "peak_rss_ratio": {v: mem[v]["peak_rss_mib"] / plain_m for v in VARIANTS[:2]}}


def dp_rows(dpr: dict[str, Any]) -> list[Row]:
    where = f"{dpr['arch']} GN, batch {dpr['batch']}, {dpr['image_size'][0]}x{dpr['image_size'][1]}"
    t, mem = dpr["step_s"], dpr["memory"]
    return [
        Row(f"DP-SGD step ghost / ew / plain ({where})",
            " / ".join(f"{t[v] * 1e3:.0f}" for v in VARIANTS) + " ms "
            f"(ghost {dpr['time_ratio']['ghost']:.2f}x plain, ew {dpr['time_ratio']['ew']:.2f}x)", "report", "info"),
        Row(f"DP-SGD peak RSS ghost / ew / plain ({where})",
            " / ".join(f"{mem[v]['peak_rss_mib']:.0f}" for v in VARIANTS) + " MiB; steps add "
            + " / ".join(f"{mem[v]['step_growth_mib']:.0f}" for v in VARIANTS)
            + f" (ghost {dpr['peak_rss_ratio']['ghost']:.2f}x plain, ew {dpr['peak_rss_ratio']['ew']:.2f}x)",
            "report", "info"),
    ]
