"""Shared pieces of `make bench`: sizes, the table row, interleaved timing, thread control, the machine."""

from __future__ import annotations

import contextlib
import cProfile
import datetime
import os
import platform
import pstats
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from benchmark.paths import project_root

NUM_CLASSES = 19
IGNORE = 255
PACKAGES = ("torch", "numpy", "mmcv", "mmsegmentation", "pytorch-lightning", "ray", "mlflow", "opacus")
OUR_CODE = tuple(str(project_root() / pkg) for pkg in ("benchmark", "ray_jobs", "analysis"))


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
    # the DP section: a paper architecture at a small image, where `ew`'s batch x parameters floats dominate
    dp_arch: str
    dp_hw: tuple[int, int]
    dp_batch: int


FULL = Sizes(8, (128, 256), 11, (64, 128), 8, 10, 4, 4, "pspnet_paper", (32, 64), 4)
QUICK = Sizes(2, (16, 32), 2, (32, 64), 2, 2, 1, 2, "pspnet_tiny", (32, 64), 2)


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


def top_entries(profile: cProfile.Profile, n: int = 8, ours: bool = True) -> list[dict[str, Any]]:
    """The `n` functions of our own packages with the most cumulative time (what a fix could touch), or,
    with `ours=False`, the `n` functions of any code with the most time of their own (where time is spent)."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = [(fn, s) for fn, s in stats.items() if not ours or fn[0].startswith(OUR_CODE)]
    rows.sort(key=lambda kv: kv[1][3 if ours else 2], reverse=True)
    root = str(Path(OUR_CODE[0]).parent) + os.sep
    return [{"function": f"{f[0].removeprefix(root)}:{f[1]}({f[2]})", "calls": s[1],
             "own_s": round(s[2], 3), "cumulative_s": round(s[3], 3)} for f, s in rows[:n]]


