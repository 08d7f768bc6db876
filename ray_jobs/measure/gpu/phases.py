"""The work the GPU check measures, each phase returning a JSON-able record.

- train steps: `SegmentationNet` forward with the auxiliary heads, the module's loss (per-image CE, aux heads
  weighted by their `loss_weight`, mean over images), backward and AdamW, under bf16 autocast as Lightning's
  `bf16-mixed` runs it. Variants: `train` (cuDNN autotuning on), `train_det` (what `train_model` sets on a GPU
  today: `deterministic="warn"`, i.e. deterministic cuDNN, no autotuning), `train_channels_last`,
  `train_compile` and `train_compile_channels_last` (`torch.compile` of the loss computation; the backward
  is compiled with it). Images and labels are synthetic and already on the device: loading is measured apart.
- dp: the GroupNorm model prepared by `benchmark.models.dp.prepare_for_dp`, wrapped by `dp.make_private` (Opacus'
  PrivacyEngine, Poisson sampling) in the grid's default mode (`dp.MODES[0]`, fast gradient clipping), its loss
  back-propagated through `PrivateTraining.loss` as the trainer does; timed steps feed a fixed batch.
- release: bf16 inference, logits resized bilinearly to the release size (1/output_stride), log_softmax in fp32.
- attack: `AttackNet(1, "paper")` (structured loss map) on crops, forward+backward+Adam, fp32 as the project
  trains it and bf16 for comparison.
- loader: the project's `SegmentationDataset` over PNGs decoded from memory (PIL, as the adapters do) and
  resized like the trainer's images, through DataLoaders with 0..N workers and pinned memory.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.data.labels import IGNORE_INDEX
from ray_jobs.measure.gpu.measure import (
    Device, StepPlan, Timing, count_flops, peak_memory_gib, reset_peak_memory, throughput, time_steps,
)

NUM_CLASSES = 19
IGNORE = IGNORE_INDEX

# name -> (deterministic, channels_last, compile)
TRAIN_VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "train": (False, False, False),
    "train_det": (True, False, False),
    "train_channels_last": (False, True, False),
    "train_compile_channels_last": (False, True, True),
    "train_compile": (False, False, True),
}


@dataclass(frozen=True)
class Settings:
    """Sizes and knobs of one run (the paper profile's, or QUICK's tiny ones)."""

    quick: bool
    image_hw: tuple[int, int]
    batch: int
    lr: float
    output_stride: int
    release_batch: int
    attack_crop: int
    attack_batch: int
    attack_lr: float
    plan: StepPlan
    compile_backend: str
    loader_workers: tuple[int, ...]
    loader_source_hw: tuple[int, int]
    loader_target_s: float
    profile: dict = field(default_factory=dict)


def synthetic_batch(batch: int, hw: tuple[int, int], device: Device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Raw 0..255 images and blocky trainId labels with ~5% ignored pixels, on the device."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *hw, generator=gen) * 255
    coarse = torch.randint(0, NUM_CLASSES, (batch, 1, max(1, hw[0] // 16), max(1, hw[1] // 16)), generator=gen)
    labels = F.interpolate(coarse.float(), size=hw, mode="nearest")[:, 0].long()
    labels[torch.rand(batch, *hw, generator=gen) < 0.05] = IGNORE
    return images.to(device.torch), labels.to(device.torch)


def autocast(device: Device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.kind, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def loss_function(net: nn.Module, heads: nn.Module, device: Device, precision: str,
                  reduce: Callable[[Tensor], Tensor] = torch.Tensor.mean) -> Callable[[Tensor, Tensor], Tensor]:
    """SegmentationModule's training loss for `net` (maybe Opacus-wrapped); `heads` is the plain SegmentationNet;
    `reduce` turns the per-image losses into what is back-propagated (DP-SGD: `PrivateTraining.loss`)."""
    from benchmark.models.lightning_module import per_image_ce

    weights = [1.0] + [float(getattr(h.loss_decode, "loss_weight", 1.0)) for h in heads.auxiliary_heads()] \
        if heads.segmentor.with_auxiliary_head else [1.0]

    def compute(images: Tensor, labels: Tensor) -> Tensor:
        with autocast(device, precision):
            outs = net(images, with_aux=True)
            loss = images.new_zeros(images.shape[0], dtype=torch.float32)
            for w, logits in zip(weights, outs):
                loss = loss + w * per_image_ce(logits, labels)
            return reduce(loss)

    return compute


@contextlib.contextmanager
def determinism(on: bool) -> Iterator[None]:
    """What Lightning's `deterministic="warn"` sets (restored afterwards); a no-op when off."""
    if not on:
        yield
        return
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "... does not have a deterministic implementation" per step
            yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[:2]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """One timed training step: zero the gradients, backward the loss, step; returns the detached loss."""

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        optimizer.step()
        return value.detach()

    return step


def timed_with_peak(step: Callable[[], Tensor], device: Device, plan: StepPlan) -> tuple[Timing, float | None]:
    """`time_steps` of `step` and the device's peak memory over them (GiB; None on the CPU)."""
    reset_peak_memory(device)
    timing = time_steps(step, device, plan)
    return timing, peak_memory_gib(device)


def safe_flops(fn: Callable[[], object]) -> tuple[int | None, str | None]:
    """Counted FLOPs, or None and the reason: a counting failure must not lose the timing."""
    try:
        return count_flops(fn), None
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {exc}"[:300]


def _record(timing, batch: int, flops: int | None, device: Device, **extra) -> dict:
    return {"status": "ok", "batch": batch, **extra, **timing.as_dict(), **throughput(timing, batch, flops, device),
            "peak_mem_gib": peak_memory_gib(device), "flops_per_step": flops}


# --- training ----------------------------------------------------------------------------------------------
def train_phase(template: nn.Module, variant: str, s: Settings, device: Device, flops: int | None = None) -> dict:
    """Timed bf16 training steps of a copy of `template` (a BN SegmentationNet on the CPU) as `variant`.

    FLOPs are counted here unless given (variants do the same arithmetic as `train`)."""
    deterministic, channels_last, compiled = TRAIN_VARIANTS[variant]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(template).to(device.torch, memory_format=fmt).train()
    images, labels = synthetic_batch(s.batch, s.image_hw, device)
    images = images.contiguous(memory_format=fmt)
    optimizer = torch.optim.AdamW(net.parameters(), lr=s.lr)
    compute = loss_function(net, net, device, "bf16-mixed")
    if compiled:
        compute = torch.compile(compute, backend=s.compile_backend)

    step = optimizer_step(optimizer, lambda: compute(images, labels))
    settings = {"precision": "bf16-mixed", "deterministic": deterministic, "channels_last": channels_last,
                "compile": s.compile_backend if compiled else False,
                "cudnn_benchmark": False if deterministic else bool(torch.backends.cudnn.benchmark)}
    with determinism(deterministic):
        timing, peak = timed_with_peak(step, device, s.plan)
    source = "given"
    if flops is None:
        plain = loss_function(net, net, device, "bf16-mixed")
        flops, source = safe_flops(lambda: plain(images, labels).backward())
        optimizer.zero_grad(set_to_none=True)
        source = source or "counted"
    rec = _record(timing, s.batch, flops, device, image_size=list(s.image_hw), settings=settings, flops_source=source)
    rec["peak_mem_gib"] = peak
    if compiled:
        rec["compile_first_step_s"] = timing.first_step_s
        rec["graph_breaks"] = graph_breaks()
    return rec


def graph_breaks() -> dict[str, int]:
    """Dynamo's graph-break reasons so far (the caller resets Dynamo between compiled phases)."""
    try:
        from torch._dynamo.utils import counters

        return {str(k)[:200]: int(v) for k, v in counters["graph_break"].most_common(8)}
    except Exception:  # noqa: BLE001 - a diagnostic only
        return {}


# --- DP-SGD ------------------------------------------------------------------------------------------------
def _dp_attempt(template: nn.Module, batch: int, precision: str, s: Settings, device: Device) -> dict:
    from benchmark.models import dp

    net = copy.deepcopy(template)
    dp.prepare_for_dp(net)  # before the optimiser: it replaces attention parameters
    net = net.to(device.torch).train()
    mode = dp.MODES[0]  # what the grid trains with unless a defense asks for another
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=s.lr)
    # make_private reads the loader's dataset length and batch size only: the timed steps feed one fixed batch
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(64 * batch)), batch_size=batch)
    private = dp.make_private(net, optimizer, loader, max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-5, epochs=1,
                              mode=mode)
    dp_optimizer = private.optimizer
    images, labels = synthetic_batch(batch, s.image_hw, device)
    compute = loss_function(private.net, net, device, precision, reduce=private.loss)

    timing, peak = timed_with_peak(optimizer_step(dp_optimizer, lambda: compute(images, labels)), device, s.plan)
    dp_optimizer.zero_grad(set_to_none=True)
    flops, error = safe_flops(lambda: compute(images, labels).backward())  # per-sample gradients included
    dp_optimizer.zero_grad(set_to_none=True)
    rec = _record(timing, batch, flops, device, image_size=list(s.image_hw), flops_source=error or "counted",
                  settings={"precision": precision, "dp_mode": mode, "grad_sample_mode": dp.opacus_mode(net, mode),
                            "norm": "GN", "poisson_sampling": True,
                            "noise_multiplier": 1.0, "max_grad_norm": 1.0})
    rec["peak_mem_gib"] = peak
    return rec


def dp_phase(template: nn.Module, s: Settings, device: Device, free: Callable[[], None]) -> dict:
    """DP-SGD steps of the GN model; halves the batch on out-of-memory and falls back to fp32 if bf16 fails."""
    from ray_jobs.measure.gpu.measure import PhaseTimeout

    batch, precision, notes = s.batch, "bf16-mixed", []
    while True:
        if notes:
            free()  # here, not in the except clause: its traceback still holds the failed attempt's tensors
        try:
            rec = _dp_attempt(template, batch, precision, s, device)
            return {**rec, "batch_requested": s.batch, "notes": notes}
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            notes.append(f"out of memory at batch {batch}: halved")
            batch //= 2
        except PhaseTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, then the fp32 attempt decides
            if precision != "bf16-mixed":
                raise
            notes.append(f"bf16-mixed failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}): retried in fp32")
            precision = "32-true"


# --- release -----------------------------------------------------------------------------------------------
def release_phase(template: nn.Module, s: Settings, device: Device) -> dict:
    """Images/s of releasing posteriors: bf16 forward, bilinear resize to 1/output_stride, fp32 log_softmax."""
    net = copy.deepcopy(template).to(device.torch).eval()
    images, _ = synthetic_batch(s.release_batch, s.image_hw, device)
    size = (s.image_hw[0] // s.output_stride, s.image_hw[1] // s.output_stride)

    def forward() -> Tensor:
        with autocast(device, "bf16-mixed"):
            logits = net(images)[0]
        return torch.log_softmax(F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False), dim=1)

    def step() -> Tensor:
        with torch.inference_mode():
            return forward()

    timing, peak = timed_with_peak(step, device, s.plan)
    with torch.no_grad():
        flops, error = safe_flops(forward)
    rec = _record(timing, s.release_batch, flops, device, image_size=list(s.image_hw), release_size=list(size),
                  flops_source=error or "counted (forward only)", settings={"precision": "bf16-mixed", "output_stride": s.output_stride})
    rec["peak_mem_gib"] = peak
    return rec


# --- patch attack ------------------------------------------------------------------------------------------
def attack_phase(precision: str, s: Settings, device: Device) -> dict:
    """Training steps of the paper's attack network on structured-loss-map crops."""
    from benchmark.attacks.network import AttackNet

    torch.manual_seed(0)
    net = AttackNet(in_channels=1, size="paper").to(device.torch).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=s.attack_lr)
    gen = torch.Generator().manual_seed(0)
    crops = (-torch.log(torch.rand(s.attack_batch, 1, s.attack_crop, s.attack_crop, generator=gen).clamp_min(1e-6)))
    crops, targets = crops.to(device.torch), torch.randint(0, 2, (s.attack_batch,), generator=gen).to(device.torch)

    def loss() -> Tensor:
        with autocast(device, precision):
            return F.cross_entropy(net(crops).float(), targets)

    timing, peak = timed_with_peak(optimizer_step(optimizer, loss), device, s.plan)
    flops, error = safe_flops(lambda: loss().backward())
    optimizer.zero_grad(set_to_none=True)
    rec = _record(timing, s.attack_batch, flops, device, crop=s.attack_crop, flops_source=error or "counted",
                  settings={"precision": precision, "size": "paper", "in_channels": 1})
    rec["peak_mem_gib"] = peak
    return rec


# --- data loading ------------------------------------------------------------------------------------------
class MemoryAdapter:
    """A dataset adapter whose PNGs live in memory: decoded with PIL per item, as the real adapters do."""

    def __init__(self, images: list[bytes], labels: list[bytes]):
        self.images, self.labels = images, labels

    @staticmethod
    def _decode(data: bytes, mode: str) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert(mode))

    def read_image(self, sample) -> np.ndarray:
        return self._decode(self.images[int(sample.id) % len(self.images)], "RGB")

    def read_label(self, sample) -> np.ndarray:
        return self._decode(self.labels[int(sample.id) % len(self.labels)], "L")


def _encode_scenes(n: int, hw: tuple[int, int]) -> tuple[list[bytes], list[bytes]]:
    """Smooth scenes with sensor-like noise (they compress like photos, ~2-3x) and blocky labels, as PNG bytes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    images, labels = [], []
    for i in range(n):
        base = np.stack([(xx * (c + 1) + yy * (i + 1)) % 256 for c in range(3)], axis=-1)
        noisy = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        label = ((yy // 32 + xx // 64 + i) % NUM_CLASSES).astype(np.uint8)
        for arr, out in ((noisy, images), (label, labels)):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
            out.append(buf.getvalue())
    return images, labels


def loader_phase(s: Settings, device: Device, fastest_train: float | None) -> dict:
    """Images/s the project's dataset code delivers through DataLoaders (workers, pinned memory, H2D copy)."""
    from benchmark.data.adapters import Sample
    from benchmark.models.data import SegmentationDataset, collate_samples

    images, labels = _encode_scenes(4 if s.quick else 8, s.loader_source_hw)
    samples = [Sample(str(i), Path(f"mem/{i}.png"), Path(f"mem/{i}_label.png")) for i in range(100_000)]
    data = SegmentationDataset(MemoryAdapter(images, labels), samples, s.image_hw)
    pin = device.kind == "cuda"
    configs = {}
    for workers in s.loader_workers:
        loader = torch.utils.data.DataLoader(
            data, batch_size=s.batch, shuffle=False, num_workers=workers, pin_memory=pin and workers > 0,
            collate_fn=collate_samples, prefetch_factor=4 if workers else None, persistent_workers=False)
        started = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - started
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < s.loader_target_s:
            batch = next(it)
            batch["image"].to(device.torch, non_blocking=pin)
            batch["label"].to(device.torch, non_blocking=pin)
            n += batch["image"].shape[0]
        if pin:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
        del it, loader
        configs[str(workers)] = {"workers": workers, "pin_memory": pin and workers > 0, "images": n,
                                 "seconds": elapsed, "images_per_s": n / elapsed, "first_batch_s": first}
    best = max(configs.values(), key=lambda c: c["images_per_s"])
    return {"status": "ok", "source_size": list(s.loader_source_hw), "image_size": list(s.image_hw), "batch": s.batch,
            "png_bytes_per_image": sum(map(len, images)) / len(images), "configs": configs,
            "best_workers": best["workers"], "best_images_per_s": best["images_per_s"],
            "fastest_train_images_per_s": fastest_train,
            "feeds_fastest_train": None if fastest_train is None else best["images_per_s"] >= fastest_train}
