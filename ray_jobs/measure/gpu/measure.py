"""Timing, FLOP counting, the time budget and the device's bf16 peak for the GPU check.

- Timed regions are bracketed by `torch.cuda.synchronize()`; warm-up runs until `warmup_s` have passed and at
  least `warmup_min` steps were taken (cuDNN autotuning and `torch.compile` land there: the first step's time is
  reported apart); the number of timed steps is then fixed from the last warm-up step so that they take about
  `target_s`, within [min_steps, max_steps]. Timed steps are not synchronised one by one: the figure is total
  time / steps, as a training loop sees it.
- Every step's loss (or, for inference, output) is checked finite on the device and the flag read once at the
  end, so the check adds no synchronisation.
- FLOPs: torch's `FlopCounterMode` over one forward+backward of the real step (matmul, convolution and attention
  ops only; elementwise, normalisation, pooling, interpolation and the optimiser are not counted), so MFU is
  a lower bound on the arithmetic the GPU did. MFU = counted FLOPs per step / step time / dense bf16 peak.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

FLOP_NOTE = "FLOPs counted by torch's FlopCounterMode on one fwd+bwd, matmul/conv only"

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s by device name; first row whose words all occur wins.
BF16_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("H200",), 989.0, "H200 (SXM): 989 dense bf16"),
    (("H100", "PCIE"), 756.0, "H100 PCIe: 756 dense bf16"),
    (("H100", "NVL"), 835.0, "H100 NVL: 835 dense bf16"),
    (("H100",), 989.0, "H100 SXM: 989 dense bf16"),
    (("A100",), 312.0, "A100: 312 dense bf16"),
    (("L40S",), 362.0, "L40S: 362 dense bf16"),
    (("V100",), 125.0, "V100 has no bf16: 125 dense fp16"),
)


@dataclass(frozen=True)
class Device:
    """Where the check runs and the peak its MFU is taken against (None: unknown, or a CPU)."""

    kind: str  # "cuda" | "cpu"
    name: str
    peak_tflops: float | None
    peak_note: str

    @property
    def torch(self) -> torch.device:
        return torch.device(self.kind)


def bf16_peak(name: str) -> tuple[float | None, str]:
    """(peak TFLOP/s, how it was found) for a CUDA device name; (None, "unknown ...") if not in the table."""
    upper = name.upper()
    for words, tflops, note in BF16_PEAK_TFLOPS:
        if all(w in upper for w in words):
            return tflops, note
    return None, f"unknown: {name!r} is not in the peak table"


def detect_device(quick: bool) -> Device:
    """The CPU in quick mode, else CUDA device 0 (the caller has checked that one is visible)."""
    if quick:
        return Device("cpu", "cpu", None, "n/a (cpu)")
    name = torch.cuda.get_device_name(0)
    peak, note = bf16_peak(name)
    return Device("cuda", name, peak, note)


def synchronize(device: Device) -> None:
    if device.kind == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: Device) -> None:
    if device.kind == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: Device) -> float | None:
    """`max_memory_allocated` since the last reset, in GiB (None on the CPU)."""
    if device.kind != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def free_memory(device: Device) -> None:
    import gc

    gc.collect()
    if device.kind == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class StepPlan:
    """How long to warm up and how many steps to time."""

    warmup_s: float
    warmup_min: int
    target_s: float
    min_steps: int
    max_steps: int


@dataclass
class Timing:
    """What `time_steps` measured."""

    warmup_steps: int
    warmup_s: float
    first_step_s: float
    steps: int
    total_s: float
    step_s: float
    finite: bool
    loss_first: float | None
    loss_last: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _scalar(x: torch.Tensor) -> float | None:
    return float(x.detach().float()) if x.numel() == 1 else None


def time_steps(step: Callable[[], torch.Tensor], device: Device, plan: StepPlan) -> Timing:
    """Warm up, then time a fixed number of calls of `step` (which returns its loss, or its output)."""
    finite = torch.ones((), dtype=torch.bool, device=device.torch)
    synchronize(device)
    started = time.perf_counter()
    first_s = last_s = 0.0
    warm = 0
    first_out = None
    while True:
        t = time.perf_counter()
        out = step()
        synchronize(device)
        last_s = time.perf_counter() - t
        if warm == 0:
            first_s, first_out = last_s, out.detach()
        finite &= torch.isfinite(out.detach()).all()
        warm += 1
        if warm >= plan.warmup_min and time.perf_counter() - started >= plan.warmup_s:
            break
    warmup_total = time.perf_counter() - started
    steps = min(plan.max_steps, max(plan.min_steps, math.ceil(plan.target_s / max(last_s, 1e-6))))
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        out = step()
        finite &= torch.isfinite(out.detach()).all()
    synchronize(device)
    total = time.perf_counter() - t
    return Timing(warm, warmup_total, first_s, steps, total, total / steps, bool(finite),
                  _scalar(first_out), _scalar(out))


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` as torch's FlopCounterMode counts them (matmul/conv/attention ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def throughput(timing: Timing, batch: int, flops_per_step: int | None, device: Device) -> dict:
    """images/s, achieved TFLOP/s and MFU (a fraction; None where there is no peak) of a timed phase."""
    tflops = flops_per_step / timing.step_s / 1e12 if flops_per_step else None
    mfu = tflops / device.peak_tflops if tflops is not None and device.peak_tflops else None
    if device.kind == "cpu":
        mfu_text = "n/a (cpu)"
    elif mfu is None:
        mfu_text = "unknown" if device.peak_tflops is None else "n/a"
    else:
        mfu_text = f"{mfu:.1%}"
    return {"images_per_s": batch / timing.step_s, "tflops": tflops, "mfu": mfu, "mfu_text": mfu_text}


# --- the time budget ---------------------------------------------------------------------------------------
class PhaseTimeout(Exception):
    """A phase ran past its share of the time budget."""


class Budget:
    """Seconds left for the whole check; phases are skipped, or cut by an alarm, when it is spent."""

    def __init__(self, total_s: float):
        self.total_s = total_s
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self, reserve: float = 0.0) -> float:
        return self.total_s - self.elapsed() - reserve


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise PhaseTimeout in this (main) thread after `seconds` (SIGALRM); a no-op where that is unavailable."""
    usable = seconds is not None and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
        raise PhaseTimeout(f"stopped after its {seconds:.0f} s share of the time budget")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
