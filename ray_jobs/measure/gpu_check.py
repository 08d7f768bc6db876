"""`make gpu-check`: training, DP-SGD, release and attack throughput of the paper architectures on one GPU.

For each architecture at the paper profile's sizes (`ray_jobs/profiles/paper.yaml`: images 512x1024, batch 8,
bf16-mixed; release 1/output_stride; attack crops 90, batch 32) it times bf16 training steps (cuDNN autotuned,
and deterministic as `train_model` runs them on a GPU today), release batches and a DP-SGD step; then the
training variants that decide what to make fast (channels-last, `torch.compile`) on the largest architecture
(most counted FLOPs per image), the patch attack's training step, and how fast the project's dataset code can
feed images through DataLoaders. It writes every figure to JSON (after each phase, so a cut run keeps what it
measured) and prints a table. Phases are skipped, or stopped, when the time budget is spent.

`--quick` (or QUICK=1): the same code on the CPU at tiny sizes (`*_tiny` configs, 64x128, batch 2, attack crops 32), in well
under two minutes; `torch.compile` then uses the "eager" backend (Dynamo capture without code generation).
Imports nothing from Ray or MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.errors import SegleakError
from benchmark.paths import project_root
from ray_jobs.grid.file import PROFILES_DIR

FAMILIES = ("pspnet", "upernet", "deeplabv3plus", "segformer")
PROFILE = PROFILES_DIR / "paper.yaml"
PACKAGES = ("torch", "numpy", "pytorch-lightning", "mmcv", "mmcv-lite", "mmengine", "mmsegmentation", "opacus")
PHASE_ORDER = ("train", "train_det", "train_channels_last", "train_compile_channels_last", "train_compile", "release", "dp")
VARIANTS = ("train_channels_last", "train_compile_channels_last", "train_compile")


def resolve_archs(names: list[str] | None, quick: bool) -> list[str]:
    """Config names for `--archs` values: a family ("pspnet": its _paper or, quick, _tiny config) or a config."""
    from benchmark.models.builder import list_architectures

    known = list_architectures()
    suffix = "_tiny" if quick else "_paper"
    out: list[str] = []
    for raw in names or list(FAMILIES):
        for name in filter(None, (p.strip() for p in raw.split(","))):
            full = name if name in known else f"{name}{suffix}"
            if full not in known:
                raise SegleakError(f"unknown architecture {name!r} in --archs; known: {', '.join(FAMILIES)} "
                                   f"or a config of mmseg_configs/ ({', '.join(known)})")
            if full not in out:
                out.append(full)
    return out


def load_settings(quick: bool):
    """The paper profile's sizes (or QUICK's) and the measuring plan."""
    import yaml

    from ray_jobs.measure.gpu.measure import StepPlan
    from ray_jobs.measure.gpu.phases import Settings

    try:
        profile = yaml.safe_load(PROFILE.read_text())
        train, release, attack = profile["train"], profile["release"], profile["attack_train"]
        paper = {"image_size": list(train["image_size"]), "batch": int(train["batch_size"]), "precision": train["precision"],
                 "lr": float(train["lr"]), "output_stride": int(release["output_stride"]),
                 "release_batch": int(release["batch_size"]), "attack_crop": int(attack["crop"]),
                 "attack_batch": int(attack["batch_size"]), "attack_lr": float(attack["lr"])}
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise SegleakError(f"{PROFILE}: cannot read the paper profile's sizes: {exc}") from None
    if quick:
        # attack crop 32, not 90: the paper-size ResNet-50 attack net takes seconds per step on two CPU cores
        return Settings(True, (64, 128), 2, paper["lr"], paper["output_stride"], 2, 32, 2,
                        paper["attack_lr"], StepPlan(0.0, 1, 0.0, 2, 2), "eager", (0, 2), (128, 256), 0.3, paper)
    workers = tuple(sorted({0, min(4, os.cpu_count() or 1), min(8, os.cpu_count() or 1)}))
    return Settings(False, tuple(paper["image_size"]), paper["batch"], paper["lr"], paper["output_stride"],
                    paper["release_batch"], paper["attack_crop"], paper["attack_batch"], paper["attack_lr"],
                    StepPlan(0.3, 3, 2.0, 3, 30), "inductor", workers, (1024, 2048), 1.5, paper)


def environment(device) -> dict[str, Any]:
    import importlib.util

    import torch

    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    spec = importlib.util.find_spec("mmcv._ext") if importlib.util.find_spec("mmcv") else None
    mmcv_ext = "missing" if spec is None else ("stub (no compiled ops)" if str(spec.origin).endswith(".py") else "compiled")
    info: dict[str, Any] = {"kind": device.kind, "name": device.name, "bf16_peak_tflops": device.peak_tflops,
                            "peak_note": device.peak_note, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.kind == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(capability=list(torch.cuda.get_device_capability(0)), memory_gib=props.total_memory / 2**30,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return {"device": info, "versions": versions, "mmcv_ext": mmcv_ext}


class Runner:
    """Runs phases under the budget, records each (also on failure) and rewrites the JSON after each."""

    def __init__(self, budget, device, out: Path, result: dict, log: Callable[[str], None], quick: bool):
        self.budget, self.device, self.out, self.result, self.log, self.quick = budget, device, out, result, log, quick

    def write(self) -> None:
        self.result["elapsed_s"] = self.budget.elapsed()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        os.replace(tmp, self.out)

    def phase(self, where: dict, label: str, name: str, fn: Callable[[], dict], *, min_s: float = 10.0,
              reserve: float = 0.0, cap: float | None = None) -> dict:
        import torch

        from ray_jobs.measure.gpu.measure import PhaseTimeout, deadline, free_memory

        left = self.budget.left(reserve)
        if left < (0.0 if self.quick else min_s):
            rec: dict[str, Any] = {"status": "skipped", "reason": f"time budget reached ({left:.0f} s left)"}
            self.result["skipped_for_time"].append(f"{label}/{name}")
        else:
            started = time.perf_counter()
            try:
                with deadline(min(cap, left) if cap else left):
                    rec = fn()
            except PhaseTimeout as exc:
                rec = {"status": "timeout", "error": str(exc)}
            except torch.cuda.OutOfMemoryError as exc:
                rec = {"status": "oom", "error": str(exc).splitlines()[0][:300]}
            except Exception as exc:  # noqa: BLE001 - one failed phase must not cost the others
                rec = {"status": "error", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400]}
                self.log("".join(traceback.format_exception(exc)[-6:]).rstrip())
            rec["phase_s"] = time.perf_counter() - started
            free_memory(self.device)
        where[name] = rec
        self.write()
        if rec["status"] == "ok" and "images_per_s" in rec:
            mem = f", peak {rec['peak_mem_gib']:.2f} GiB" if rec.get("peak_mem_gib") is not None else ""
            self.log(f"{label}/{name}: {rec['images_per_s']:.1f} img/s, {rec['step_s'] * 1e3:.1f} ms/step, "
                     f"MFU {rec['mfu_text']}{mem} ({rec['phase_s']:.1f} s)")
        else:
            self.log(f"{label}/{name}: {rec['status']} {rec.get('reason') or rec.get('error') or ''}".rstrip())
        return rec


def _segmentation_net(arch: str, norm: str):
    from benchmark.models.builder import build_segmentor
    from benchmark.models.lightning_module import SegmentationNet

    return SegmentationNet(build_segmentor(arch, norm=norm, num_classes=19))


def run(archs: list[str], quick: bool, budget_s: float, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from ray_jobs.measure.gpu import phases as ph
    from ray_jobs.measure.gpu.measure import FLOP_NOTE, Budget, detect_device, free_memory
    from ray_jobs.measure.gpu.report import goal, table_rows

    if not quick and not torch.cuda.is_available():
        raise SegleakError("no CUDA GPU is visible: run on a GPU machine, or with --quick (tiny sizes on the CPU)")
    budget = Budget(budget_s)
    s = load_settings(quick)
    device = detect_device(quick)
    if device.kind == "cuda":
        torch.backends.cudnn.benchmark = True  # the fast path; train_det measures the deterministic one
    result: dict[str, Any] = {
        "schema": "segleak.gpu-check/1", "quick": quick, **environment(device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "profile": {"source": "QUICK (tiny)" if quick else str(PROFILE.relative_to(project_root())),
                    "image_size": list(s.image_hw), "batch": s.batch, "precision": "bf16-mixed", "lr": s.lr,
                    "output_stride": s.output_stride, "release_batch": s.release_batch, "attack_crop": s.attack_crop,
                    "attack_batch": s.attack_batch, "paper": s.profile},
        "flop_counting": FLOP_NOTE + " (aten matmul/convolution/attention ops; elementwise, norms, pooling, "
                         "interpolation and optimiser steps not counted)",
        "timing": {"warmup_s": s.plan.warmup_s, "warmup_min_steps": s.plan.warmup_min, "target_s": s.plan.target_s,
                   "steps": [s.plan.min_steps, s.plan.max_steps], "data": "synthetic, already on the device"},
        "budget_s": budget_s, "elapsed_s": 0.0, "skipped_for_time": [], "archs": {}, "largest_arch": None,
        "attack": {}, "loader": None,
    }
    runner = Runner(budget, device, out, result, log, quick)
    templates = {}
    variant_reserve = 0.0 if quick else 75.0  # DP (~15 s an arch), attack and loader still to come

    # 1. per architecture: bf16 training (autotuned, deterministic) and release
    for arch in archs:
        entry = result["archs"][arch] = {"phases": {}, "elapsed_s": 0.0}
        started = time.perf_counter()
        try:
            templates[arch] = _segmentation_net(arch, "BN")
            entry["params_m"] = sum(p.numel() for p in templates[arch].parameters()) / 1e6
        except Exception as exc:  # noqa: BLE001
            for name in ("train", "train_det", "release"):
                entry["phases"][name] = {"status": "error", "error": f"building {arch}: {type(exc).__name__}: {exc}"[:400]}
            runner.write()
            continue
        t = templates[arch]
        rec = runner.phase(entry["phases"], arch, "train", lambda: ph.train_phase(t, "train", s, device))
        flops = rec.get("flops_per_step")
        runner.phase(entry["phases"], arch, "train_det", lambda: ph.train_phase(t, "train_det", s, device, flops))
        runner.phase(entry["phases"], arch, "release", lambda: ph.release_phase(t, s, device))
        entry["elapsed_s"] += time.perf_counter() - started
        log(f"{arch}: {entry['elapsed_s']:.0f} s so far")

    # 2. the variants that decide what to make fast, on the largest architecture
    counted = {a: e["phases"]["train"]["flops_per_step"] / e["phases"]["train"]["batch"] for a, e in result["archs"].items()
               if e["phases"].get("train", {}).get("status") == "ok" and e["phases"]["train"].get("flops_per_step")}
    if counted:
        largest = result["largest_arch"] = max(counted, key=counted.get)
        entry, t = result["archs"][largest], templates[largest]
        flops = entry["phases"]["train"]["flops_per_step"]
        started = time.perf_counter()
        for name in VARIANTS:
            compiled = "compile" in name
            runner.phase(entry["phases"], largest, name, lambda n=name: ph.train_phase(t, n, s, device, flops),
                         min_s=60.0 if compiled else 10.0, reserve=variant_reserve, cap=180.0 if compiled else None)
            if compiled:
                torch._dynamo.reset()
                with contextlib.suppress(Exception):
                    torch._dynamo.utils.counters.clear()
        entry["elapsed_s"] += time.perf_counter() - started
    templates.clear()

    # 3. DP-SGD per architecture (GroupNorm model)
    for arch in archs:
        entry = result["archs"][arch]
        started = time.perf_counter()
        runner.phase(entry["phases"], arch, "dp",
                     lambda a=arch: ph.dp_phase(_segmentation_net(a, "GN"), s, device, lambda: free_memory(device)),
                     min_s=20.0, reserve=0.0 if quick else 20.0)
        entry["elapsed_s"] += time.perf_counter() - started
        entry["phases"] = {n: entry["phases"][n] for n in PHASE_ORDER if n in entry["phases"]}
        log(f"{arch}: {entry['elapsed_s']:.0f} s in all")

    # 4. the patch attack (independent of the segmentation architecture) and 5. data loading
    for precision in ("32-true", "bf16-mixed"):
        name = "attack_fp32" if precision == "32-true" else "attack_bf16"
        runner.phase(result["attack"], "attack", name, lambda p=precision: ph.attack_phase(p, s, device), min_s=5.0)
    rates = [r["images_per_s"] for e in result["archs"].values() for n, r in e["phases"].items()
             if n.startswith("train") and r.get("status") == "ok"]
    loader: dict[str, Any] = {}
    runner.phase(loader, "data", "loader", lambda: ph.loader_phase(s, device, max(rates) if rates else None), min_s=5.0)
    result["loader"] = loader["loader"]

    result["goal"] = goal(result)
    result["table"] = table_rows(result)
    runner.write()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.measure.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny architectures on the CPU (also QUICK=1), for tests")
    parser.add_argument("--out", default="results/gpu-check.json", help="where to write the JSON (default: %(default)s)")
    parser.add_argument("--archs", nargs="+", metavar="ARCH",
                        help=f"families ({', '.join(FAMILIES)}) or config names (default: all four families)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds for all phases; later phases are skipped past it (default: %(default)s)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("QUICK", "").lower() in ("1", "true", "yes")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"gpu-check [{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        if not args.budget_s > 0:
            raise SegleakError(f"--budget-s must be > 0, got {args.budget_s}")
        archs = resolve_archs(args.archs, quick)
        warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated")  # mmseg, per model built
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus hooks, input needs no grad
        result = run(archs, quick, args.budget_s, Path(args.out), log)
    except SegleakError as exc:
        print(f"segleak: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segleak: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, as the segleak CLI promises
        if os.environ.get("SEGLEAK_DEBUG"):
            raise
        print(f"segleak: error: {type(exc).__name__}: {exc} (set SEGLEAK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    from ray_jobs.measure.gpu.report import summary

    print(summary(result))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
