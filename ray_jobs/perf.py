"""`make bench`: segleak's performance figures, each the ratio of two timings taken side by side in one run.

The project's machines are small and shared, so no absolute time is meaningful on its own: every figure
compares two variants of the same work measured in interleaved repetitions (median of several), so that load
from other processes hits both alike. Targets are printed next to the figures; nothing here asserts a
timing. `--quick` shrinks every size and skips the smoke run (for tests).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime
import io
import json
import logging
import os
import platform
import pstats
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.attacks.features import EPS, concatenation, structured_loss_map
from benchmark.errors import SegleakError
from ray_jobs.store import ResultStore

NUM_CLASSES = 19
IGNORE = 255
PACKAGES = ("torch", "numpy", "mmcv", "mmsegmentation", "pytorch-lightning", "ray", "mlflow", "opacus")
OUR_CODE = tuple(str(Path(__file__).resolve().parents[1] / pkg) for pkg in ("benchmark", "ray_jobs", "analysis"))


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one bench run; `quick` ones keep the test under a few seconds per section."""

    feature_batch: int
    feature_hw: tuple[int, int]
    feature_repeats: int
    train_hw: tuple[int, int]
    train_batch: int
    train_steps: int
    train_repeats: int
    dp_steps: int


FULL = Sizes(8, (128, 256), 11, (64, 128), 8, 10, 4, 8)
QUICK = Sizes(2, (16, 32), 2, (32, 64), 2, 2, 1, 2)


@dataclass
class Row:
    """One line of the printed table."""

    figure: str
    value: str
    target: str
    verdict: str


# --- measurement helpers ---------------------------------------------------------------------------------
def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per variant, running them in turn (rotating who goes first) so load hits all alike."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for fn in variants.values():  # warm-up: allocator, lazy inits
        fn()
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    return {n: statistics.median(t) for n, t in times.items()}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads and restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def machine_info(default_threads: int) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "torch_threads_default": default_threads,
        "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


# --- 1. attack features ----------------------------------------------------------------------------------
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


def check_features_equal(probs: torch.Tensor, labels: torch.Tensor) -> bool:
    """The loops and segleak's functions compute the same maps (so the timing compares equal work)."""
    p, y = probs.numpy(), labels.numpy()
    return bool(
        np.allclose(loop_structured_loss_map(p, y), structured_loss_map(probs, labels).numpy(), rtol=1e-5, atol=1e-6)
        and np.array_equal(loop_concatenation(p, y), concatenation(probs, labels).numpy())
    )


def bench_features(sizes: Sizes, default_threads: int) -> dict[str, Any]:
    """Vectorised features vs the per-class loop and vs one plain copy of the posteriors, at 1 and default threads."""
    probs, labels = random_posteriors(sizes.feature_batch, sizes.feature_hw)
    p, y = probs.numpy(), labels.numpy()
    out: dict[str, Any] = {"shape": list(probs.shape), "bytes": probs.numel() * probs.element_size(),
                           "outputs_equal": check_features_equal(probs, labels)}
    for threads in sorted({1, default_threads}):
        with torch_threads(threads):
            t = interleaved({
                "loop_slm": lambda: loop_structured_loss_map(p, y),
                "slm": lambda: structured_loss_map(probs, labels),
                "loop_concat": lambda: loop_concatenation(p, y),
                "concat": lambda: concatenation(probs, labels),
                "copy": probs.clone,
            }, sizes.feature_repeats)
        out[f"threads_{threads}"] = {
            "seconds": t,
            "gb_per_s": {k: out["bytes"] / v / 1e9 for k, v in t.items()},
            "speedup_slm": t["loop_slm"] / t["slm"], "speedup_concat": t["loop_concat"] / t["concat"],
            "copy_over_slm": t["copy"] / t["slm"], "copy_over_concat": t["copy"] / t["concat"],
        }
    return out


def feature_rows(res: dict[str, Any]) -> list[Row]:
    rows = [Row("features: loops == segleak (allclose)", str(res["outputs_equal"]), "True", verdict(res["outputs_equal"]))]
    for key in sorted(k for k in res if k.startswith("threads_")):
        r, n = res[key], key.split("_")[1]
        for feat in ("slm", "concat"):
            rows.append(Row(f"{feat} speed-up vs per-class loop ({n} thr)", f"{r[f'speedup_{feat}']:.1f}x", ">= 5x",
                            verdict(r[f"speedup_{feat}"] >= 5)))
            rows.append(Row(f"{feat} GB/s vs one copy ({n} thr)",
                            f"{r['gb_per_s'][feat]:.2f} vs {r['gb_per_s']['copy']:.2f} ({r[f'copy_over_{feat}']:.2f}x)",
                            ">= 1x copy", verdict(r[f"copy_over_{feat}"] >= 1)))
    return rows


# --- 2/3. training steps ---------------------------------------------------------------------------------
class RandomScenes(torch.utils.data.Dataset):
    """In-memory images (0..255) and labels shaped like `SegmentationDataset` items: no decoding noise."""

    def __init__(self, n: int, hw: tuple[int, int], seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, *hw, generator=gen) * 255
        self.labels = torch.randint(0, NUM_CLASSES, (n, *hw), generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "id": f"img{i}", "index": torch.tensor(i)}


def _loader(data: RandomScenes, batch: int) -> torch.utils.data.DataLoader:
    from benchmark.models.data import collate_samples

    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, collate_fn=collate_samples)


def _step_times(stamps: list[float]) -> list[float]:
    """Seconds between successive batches handed to the step; the first (warm-up) step is dropped, and the
    last has no successor: so neither the first step nor the end-of-fit teardown counts."""
    return [b - a for a, b in zip(stamps[1:-1], stamps[2:])]


def lightning_steps(arch: str, data: RandomScenes, batch: int, lr: float) -> tuple[list[float], float]:
    """segleak's Lightning path (SegmentationModule + a Trainer set up as train_model does): step times, set-up."""
    import pytorch_lightning as pl

    from benchmark.defenses import build_defense
    from benchmark.models.lightning_module import SegmentationModule

    stamps: list[float] = []

    class Stamp(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)  # banner lines
    torch.manual_seed(0)
    module = SegmentationModule(arch, build_defense("none"), num_classes=NUM_CLASSES, optimizer="adamw", lr=lr,
                                eval_names=())
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, precision="32-true", deterministic=True,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Stamp()])
    started = time.perf_counter()
    with warnings.catch_warnings():  # "few dataloader workers": in-memory data needs none
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=_loader(data, batch))
    return _step_times(stamps), stamps[0] - started


def plain_steps(arch: str, data: RandomScenes, batch: int, lr: float) -> list[float]:
    """The same model, loss, optimiser and LR schedule in a hand-written PyTorch loop: step times."""
    from benchmark.models.builder import build_segmentor
    from benchmark.models.lightning_module import SegmentationNet, per_image_ce

    torch.manual_seed(0)
    net = SegmentationNet(build_segmentor(arch)).train()
    loader = _loader(data, batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=len(loader), power=0.9)
    stamps, losses = [], []
    with deterministic_algorithms():
        for b in loader:
            stamps.append(time.perf_counter())
            optimizer.zero_grad()
            loss = per_image_ce(net(b["image"])[0], b["label"]).mean()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return _step_times(stamps)


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """What `deterministic=True` makes Lightning set, so the plain loop runs the same kernels."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def bench_training(sizes: Sizes, arch: str = "pspnet_tiny", lr: float = 3e-3) -> dict[str, Any]:
    """Lightning vs plain per-step time, runs alternated; the Trainer's one-off set-up is reported apart."""
    data = RandomScenes(sizes.train_batch * (sizes.train_steps + 2), sizes.train_hw)
    light, plain, setup = [], [], []
    with torch_threads(1):
        for r in range(sizes.train_repeats):
            for which in (("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")):
                if which == "plain":
                    plain += plain_steps(arch, data, sizes.train_batch, lr)
                else:
                    steps, s = lightning_steps(arch, data, sizes.train_batch, lr)
                    light += steps
                    setup.append(s)
    lm, pm = statistics.median(light), statistics.median(plain)
    return {"arch": arch, "image_size": list(sizes.train_hw), "batch": sizes.train_batch, "threads": 1,
            "steps_per_run": sizes.train_steps, "runs": sizes.train_repeats,
            "lightning_step_s": lm, "plain_step_s": pm, "overhead": lm / pm - 1,
            "lightning_setup_s": statistics.median(setup)}


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
    from ray_jobs import (
        perf,  # by module name: `python -m` runs this file as __main__, which spawn cannot import
    )

    variants = {"plain": False, "dp": True}
    args = (arch, sizes.train_hw, sizes.train_batch, max(2, sizes.dp_steps // 2))
    if not isolate:
        return {name: dp_memory_worker(private, *args) for name, private in variants.items()}
    with ProcessPoolExecutor(2, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {name: pool.submit(perf.dp_memory_worker, private, *args) for name, private in variants.items()}
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


def training_rows(train: dict[str, Any], dpr: dict[str, Any]) -> list[Row]:
    return [
        Row(f"Lightning step vs plain loop ({train['arch']}, bs {train['batch']})",
            f"{train['lightning_step_s'] * 1e3:.0f} vs {train['plain_step_s'] * 1e3:.0f} ms (+{train['overhead']:.1%})",
            "< +10%", verdict(train["overhead"] < 0.10)),
        Row("Lightning one-off set-up (fit -> first step)", f"{train['lightning_setup_s'] * 1e3:.0f} ms", "-", "info"),
        Row("DP-SGD step vs plain step (GN, same batch)",
            f"{dpr['dp_step_s'] * 1e3:.0f} vs {dpr['plain_step_s'] * 1e3:.0f} ms ({dpr['time_ratio']:.2f}x)", "report", "info"),
        Row("DP-SGD peak RSS vs plain (step growth)",
            f"{dpr['memory']['dp']['peak_rss_mib']:.0f} vs {dpr['memory']['plain']['peak_rss_mib']:.0f} MiB "
            f"({dpr['peak_rss_ratio']:.2f}x; steps add {dpr['memory']['dp']['step_growth_mib']:.0f} vs "
            f"{dpr['memory']['plain']['step_growth_mib']:.0f} MiB)", "report", "info"),
    ]


# --- 4. planning -----------------------------------------------------------------------------------------
PAPER_SIZES = {"cityscapes": (2975, 500), "bdd100k": (7000, 1000), "mapillary": (18000, 2000)}


def fake_sources(grid: Any) -> dict[str, Any]:
    """Id lists of the right sizes (the synthetic profile's, or the real datasets' for real roots)."""
    from benchmark.data.splits import ImageIndex
    from ray_jobs.plan import DataSource

    sources = {}
    for name, entry in grid.datasets.items():
        n_train, n_val = (grid.synthetic["n_train"], grid.synthetic["n_val"]) if entry.synthetic else PAPER_SIZES[name]
        index = ImageIndex(name, {"train": tuple(f"train/{name}_{i:05d}" for i in range(n_train)),
                                  "val": tuple(f"val/{name}_{i:05d}" for i in range(n_val))})
        sources[name] = DataSource(name, entry.spec, f"/data/{name}", index)
    return sources


def bench_planning(profile: str) -> dict[str, Any]:
    """Units the plan shares between cells vs the naive grid (each cell trains its own victim and shadow)."""
    from ray_jobs.plan import build_plan
    from ray_jobs.sources import make_manifests
    from ray_jobs.spec import load_grid

    grid = load_grid(profile)
    sources = fake_sources(grid)
    error = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            manifests = make_manifests(grid, sources, ResultStore(tmp), stream=io.StringIO())
        except SegleakError as exc:  # reported, and the rest of the grid is still counted
            error = f"{exc}; counted without controls"
            grid = dataclasses.replace(grid, controls=())
            manifests = make_manifests(grid, sources, ResultStore(tmp), stream=io.StringIO())
        plan = build_plan(grid, sources, manifests)
    counts = plan.counts()
    return {"cells": counts["cell"], "models": counts["model"], "releases": counts["release"],
            "attack_models": counts["fit"], "naive_models": counts["naive_models"],
            "naive_attack_models": counts["cell"], "plan_seconds": time.perf_counter() - started, "error": error}


def planning_rows(plans: dict[str, dict[str, Any]]) -> list[Row]:
    return [Row(f"plan '{p}': cells / models / releases / attacks", f"{r['cells']} / {r['models']} / {r['releases']} / "
                f"{r['attack_models']} (naive {r['naive_models']} models, {r['naive_attack_models']} attacks)",
                "models < naive", verdict(r["models"] < r["naive_models"]) + (" (no placebo*)" if r["error"] else ""))
            for p, r in plans.items()]


# --- 5/6/7. smoke run, released bytes, profile -----------------------------------------------------------
def time_ray_init(workdir: Path) -> float:
    """Seconds for the runner's own `ray.init` on this machine (then shut down)."""
    import ray

    from ray_jobs.runner import init_ray

    started = time.perf_counter()
    init_ray(None, None, ResultStore(workdir))
    elapsed = time.perf_counter() - started
    ray.shutdown()
    return elapsed


def top_entries(profile: cProfile.Profile, n: int = 8, ours: bool = True) -> list[dict[str, Any]]:
    """The `n` functions of our own packages with the most cumulative time (what a fix could touch), or,
    with `ours=False`, the `n` functions of any code with the most time of their own (where time is spent)."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = [(fn, s) for fn, s in stats.items() if not ours or fn[0].startswith(OUR_CODE)]
    rows.sort(key=lambda kv: kv[1][3 if ours else 2], reverse=True)
    root = str(Path(OUR_CODE[0]).parent) + os.sep
    return [{"function": f"{f[0].removeprefix(root)}:{f[1]}({f[2]})", "calls": s[1],
             "own_s": round(s[2], 3), "cumulative_s": round(s[3], 3)} for f, s in rows[:n]]


def replay_units(results: Path, scratch: Path) -> tuple[dict[str, float], cProfile.Profile]:
    """Re-run the smoke plan's units one by one in this process, into a fresh store, under cProfile."""
    from ray_jobs.plan import build_plan
    from ray_jobs.sources import make_manifests, prepare_sources
    from ray_jobs.spec import load_grid
    from ray_jobs.units import execute

    grid = load_grid("smoke")
    sources = prepare_sources(grid, ResultStore(results))  # the smoke run's data, already written
    plan = build_plan(grid, sources, make_manifests(grid, sources, ResultStore(scratch), stream=io.StringIO()))
    seconds: dict[str, float] = {}
    profile = cProfile.Profile()
    with torch_threads(1):
        for unit in plan.topological():
            started = time.perf_counter()
            profile.enable()
            execute(unit.kind, unit.key, unit.config_dict, str(scratch), 1)
            profile.disable()
            seconds[unit.kind] = seconds.get(unit.kind, 0.0) + time.perf_counter() - started
    return seconds, profile


def bench_smoke(workdir: Path) -> dict[str, Any]:
    """Smoke profile end to end (then again, all cached) vs its units' own compute time."""
    from ray_jobs.runner import run_benchmark

    results = workdir / "smoke"
    ray_init = time_ray_init(workdir)
    first = run_benchmark(profile="smoke", results=str(results), stream=io.StringIO())
    ledger = ResultStore(results).ledger()
    driver = cProfile.Profile()
    driver.enable()
    second = run_benchmark(profile="smoke", results=str(results), stream=io.StringIO())
    driver.disable()
    in_process, unit_profile = replay_units(results, workdir / "replay")
    ledger_sum = sum(e["seconds"] for e in ledger)
    return {"wall_s": first.wall_seconds, "ledger_unit_s": ledger_sum, "units": len(ledger),
            "in_process_unit_s": in_process, "in_process_total_s": sum(in_process.values()),
            "wall_over_compute": first.wall_seconds / sum(in_process.values()), "cached_wall_s": second.wall_seconds,
            "cached_units": second.cached, "ray_init_s": ray_init,
            "driver_profile_cached_run": top_entries(driver), "units_profile_in_process": top_entries(unit_profile),
            "units_profile_own_time": top_entries(unit_profile, ours=False),
            "release_files": sorted(str(p) for p in (results / "release").glob("*/outputs.npz"))}


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


def smoke_rows(smoke: dict[str, Any] | None, rel: dict[str, Any]) -> list[Row]:
    rows = [Row("released outputs: bytes/image stored vs raw f32",
                f"{rel['stored_bytes_per_image']:.0f} vs {rel['raw_float32_bytes_per_image']:.0f} ({rel['compression']:.1f}x smaller)",
                "< raw f32", verdict(rel["compression"] > 1))]
    if smoke is None:
        return [Row("smoke run (orchestration, profile)", "skipped (--quick)", "-", "skip")] + rows
    return [
        Row("smoke wall vs units' own compute (in-process)",
            f"{smoke['wall_s']:.1f} vs {smoke['in_process_total_s']:.1f} s ({smoke['wall_over_compute']:.1f}x)", "report", "info"),
        Row("smoke units' time in the ledger (inside the store writer)", f"{smoke['ledger_unit_s']:.1f} s", "-", "info"),
        Row("ray.init", f"{smoke['ray_init_s']:.1f} s", "-", "info"),
        Row("smoke second invocation (all cached)", f"{smoke['cached_wall_s']:.1f} s", "-", "info"),
    ] + rows


# --- driver ----------------------------------------------------------------------------------------------
def run(quick: bool, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Every section in turn; returns the JSON-able result with the table in it."""
    sizes = QUICK if quick else FULL
    default_threads = torch.get_num_threads()
    out: dict[str, Any] = {"quick": quick, "machine": machine_info(default_threads), "sizes": sizes.__dict__}
    log("features ...")
    out["features"] = bench_features(sizes, default_threads)
    log("training steps ...")
    out["training"] = bench_training(sizes)
    log("DP-SGD steps ...")
    out["dp"] = bench_dp(sizes, isolate=not quick)
    log("planning ...")
    out["planning"] = {p: bench_planning(p) for p in ("default", "paper")}
    out["smoke"] = None
    if not quick:
        log("smoke profile (twice) and in-process replay ...")
        out["smoke"] = bench_smoke(workdir)
    smoke_files = [Path(p) for p in out["smoke"]["release_files"]] if out["smoke"] else []
    out["release"] = bench_release(smoke_files or [make_release(workdir / "outputs.npz")])
    out["release"]["source"] = "smoke run" if smoke_files else "synthetic posteriors"
    rows = (feature_rows(out["features"]) + training_rows(out["training"], out["dp"]) + planning_rows(out["planning"])
            + smoke_rows(out["smoke"], out["release"]))
    out["table"] = [r.__dict__ for r in rows]
    return out


def format_table(rows: list[dict[str, str]]) -> str:
    """A plain-text table: figure | value | target | verdict."""
    head = {"figure": "figure", "value": "value", "target": "target", "verdict": "verdict"}
    widths = {k: max(len(r[k]) for r in [head, *rows]) for k in head}
    lines = ["  ".join(r[k].ljust(widths[k]) for k in head) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * widths[k] for k in head))
    return "\n".join(lines)


def format_profile(entries: list[dict[str, Any]], title: str) -> str:
    lines = [title] + [f"  {e['cumulative_s']:7.2f} s cum  {e['own_s']:6.2f} s own  {e['calls']:>6}x  {e['function']}"
                       for e in entries]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench.json", help="where to write the JSON (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no smoke run (for tests)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated")  # mmseg, per model built
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segleak-bench-") as tmp:
        result = run(args.quick, Path(tmp), lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    result["bench_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    m = result["machine"]
    print(f"\nsegleak bench on {m['cpu_model']}, {m['cores']} cores, torch {m['versions'].get('torch')}, {m['date']}")
    print(format_table(result["table"]))
    for profile, plan in result["planning"].items():
        if plan["error"]:
            print(f"* plan '{profile}': {plan['error']}")
    if result["smoke"]:
        print(format_profile(result["smoke"]["units_profile_in_process"], "\nsmoke units in-process, top of our code:"))
        print(format_profile(result["smoke"]["units_profile_own_time"], "smoke units in-process, most own time (any code):"))
        print(format_profile(result["smoke"]["driver_profile_cached_run"], "driver, cached run, top of our code:"))
    print(f"\nwritten {out} ({result['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
