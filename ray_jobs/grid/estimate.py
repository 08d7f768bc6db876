"""What a grid will cost on a GPU, before it is launched: GPU-hours per unit kind from a `make gpu-check`
measurement (images per second of each architecture's training step, DP-SGD step, release batch and
patch-attack step on one device), printed by `segleak benchmark --dry-run`.

Work per unit: a model trains on its ids for its epochs (the defense's own epoch budget) and is evaluated
once on its ids and held-out ids; a release queries its images; a fit of an attack that trains a network
runs `epochs x n_crops_train` crops per training image and `n_crops_test` per calibration image. Units of a
stage that holds no GPU in the grid's `resources` (cells, blind baselines: scoring) cost no GPU time, nor do
fits of attacks without a network. Seconds = work / measured rate, with the rate scaled by pixels when the
grid's image (or crop) size differs from the measured one; a fractional GPU shares a device, so it adds no
GPU-hours. The assumptions are printed with the figures.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.defenses import build_defense
from benchmark.errors import SegleakError
from benchmark.paths import project_root
from benchmark.registry import DEFENSES
from ray_jobs.grid.spec import Grid
from ray_jobs.units import UNIT_KINDS
from ray_jobs.units.base import Plan, Unit

MEASURED = project_root() / "ray_jobs" / "measure" / "gpu" / "measured" / "nvidia-h200.json"
SCHEMA = "segleak.gpu-check/1"
ATTACK_PHASES = ("attack_bf16", "attack_fp32")  # the faster one measured is used
ASSUMPTIONS = (
    "rates from synthetic data already on the device: data loading is assumed to keep up",
    "rates scale with pixels when the grid's image or crop size differs from the measured one",
    "a fractional GPU shares a device: GPU-hours are the units' work at the full device's rate",
    "cells and blind baselines (no GPU in `resources`) and fits of attacks without a network: 0 GPU-hours",
    "not counted: a distilled student's teacher forward passes, a reference set's extra batches, retries",
)


@dataclass(frozen=True)
class GpuCheck:
    """One gpu-check JSON (`make gpu-check`): its device and the measured rates."""

    source: str
    data: dict[str, Any]

    @property
    def device(self) -> str:
        return self.data["device"]["name"]

    def phase(self, arch: str, name: str) -> dict[str, Any] | None:
        found = self.data.get("archs", {}).get(arch, {}).get("phases", {}).get(name)
        return found if found and found.get("status") == "ok" else None

    def attack(self) -> dict[str, Any] | None:
        measured = [self.data.get("attack", {}).get(p) for p in ATTACK_PHASES]
        ok = [p for p in measured if p and p.get("status") == "ok"]
        return max(ok, key=lambda p: p["images_per_s"]) if ok else None

    def dp_slowdown(self) -> tuple[str, float] | None:
        """(arch, plain/DP rate) of the first architecture whose DP-SGD step was measured."""
        for arch in self.data.get("archs", {}):
            dp, train = self.phase(arch, "dp"), self.phase(arch, "train")
            if dp and train:
                return arch, train["images_per_s"] / dp["images_per_s"]
        return None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SegleakError(f"gpu-check file {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SegleakError(f"gpu-check file {path}: not a `make gpu-check` result (schema {SCHEMA!r} expected)")
    return data


def load_gpu_check(path: str | None, results: str | None = None) -> GpuCheck:
    """`path` (refused unless a full measurement), else `<results>/gpu-check.json` if it is one, else the
    committed H200 measurement. A QUICK result (tiny sizes on the CPU) estimates nothing."""
    if path is not None:
        data = _read(Path(path))
        if data.get("quick"):
            raise SegleakError(f"gpu-check file {path}: a QUICK=1 result (tiny sizes on the CPU) cannot estimate a grid; "
                               "run `make gpu-check` on the GPU")
        return GpuCheck(str(path), data)
    if results and "://" not in results:
        local = Path(results) / "gpu-check.json"
        if local.is_file():
            try:
                data = _read(local)
            except SegleakError:
                data = {"quick": True}
            if not data.get("quick"):
                return GpuCheck(str(local), data)
    return GpuCheck(str(MEASURED.relative_to(project_root())), _read(MEASURED))


def _pixels(size: Any) -> int | None:
    return int(size[0]) * int(size[1]) if size else None


def _scale(measured_size: Any, grid_size: Any) -> float:
    """Seconds per image relative to the measured size (1 when either is unknown)."""
    measured, wanted = _pixels(measured_size), _pixels(grid_size)
    return wanted / measured if measured and wanted else 1.0


@dataclass
class KindEstimate:
    units: int = 0
    gpu_seconds: float = 0.0
    cpu_only: int = 0  # units that hold no GPU or use none
    unmeasured: dict[str, int] = field(default_factory=dict)  # why -> units without an estimate
    parts: dict[str, list[float]] = field(default_factory=dict)  # measured phase -> [units, GPU seconds]


@dataclass
class Estimate:
    check: GpuCheck
    kinds: dict[str, KindEstimate]
    notes: list[str]

    @property
    def gpu_hours(self) -> float:
        return sum(k.gpu_seconds for k in self.kinds.values()) / 3600


class _Estimator:
    def __init__(self, plan: Plan, grid: Grid, check: GpuCheck) -> None:
        self.plan, self.grid, self.check = plan, grid, check
        self.notes: set[str] = set()
        self._defenses: dict[str, Any] = {}

    def _defense(self, spec: dict[str, Any]) -> Any:
        key = json.dumps(spec, sort_keys=True)
        if key not in self._defenses:
            self._defenses[key] = build_defense(spec["name"], spec["params"], side="training")
        return self._defenses[key]

    def _rate(self, arch: str, phase: str) -> tuple[float, Any]:
        found = self.check.phase(arch, phase)
        if found is None:
            raise LookupError(f"{arch} {phase} not measured")
        return found["images_per_s"], found.get("image_size")

    def part(self, unit: Unit, train_phase: str = "train") -> str | None:
        """The measured phase a unit's estimate rests on, where a kind has several (models: train, dp)."""
        if unit.kind != "model":
            return None
        return DEFENSES.lookup(unit.config.defense["name"]).gpu_phase or train_phase

    def model(self, unit: Unit, train_phase: str = "train") -> float:
        cfg = unit.config
        defense = self._defense(cfg.defense)
        phase = self.part(unit, train_phase)
        measured_on = cfg.arch
        try:
            rate, size = self._rate(cfg.arch, phase)
        except LookupError:
            slowdown = self.check.dp_slowdown() if phase == "dp" else None
            if slowdown is None:
                raise
            rate, size = self._rate(cfg.arch, "train")
            rate /= slowdown[1]
            measured_on = slowdown[0]
            self.notes.add(f"DP-SGD of {cfg.arch} not measured: its plain rate / {slowdown[1]:.0f} "
                           f"(the DP slowdown measured on {slowdown[0]})")
        if phase == "dp":
            # gpu-check files from before the ghost mode carry no dp_mode: they measured ew
            measured = self.check.phase(measured_on, "dp")["settings"].get("dp_mode", "ew")
            if measured != defense.mode:
                self.notes.add(f"DP-SGD rates were measured in the {measured} mode, the grid trains in {defense.mode} "
                               "(rerun `make gpu-check` for its rates)")
        image_size = cfg.train.get("image_size")
        if cfg.train.get("precision") and cfg.train["precision"] != self.check.data.get("profile", {}).get("precision"):
            self.notes.add(f"the grid trains in {cfg.train['precision']}, the rates are "
                           f"{self.check.data.get('profile', {}).get('precision')}")
        epochs = defense.epochs(int(cfg.train["epochs"]))
        train = len(cfg.train_ids) * epochs / rate * _scale(size, image_size)
        eval_rate, eval_size = self._rate(cfg.arch, "release")
        return train + (len(cfg.train_ids) + len(cfg.heldout_ids)) / eval_rate * _scale(eval_size, image_size)

    def release(self, unit: Unit) -> float:
        cfg = unit.config
        arch = self.plan.units[cfg.model].config.arch
        rate, size = self._rate(arch, "release")
        return (len(cfg.members) + len(cfg.nonmembers)) / rate * _scale(size, cfg.image_size)

    def fit(self, unit: Unit) -> float | None:
        cfg = unit.config
        if not cfg.attack_train:  # an attack without a network: statistics on the released maps
            return None
        attack = self.check.attack()
        if attack is None:
            raise LookupError("patch attack not measured")
        crop = cfg.attack_train.get("crop")
        rate = attack["images_per_s"] / _scale((attack.get("crop"),) * 2, (crop, crop) if crop else None)
        if cfg.attack_train.get("size") != attack.get("settings", {}).get("size"):
            self.notes.add(f"the patch attack's network is '{cfg.attack_train.get('size')}', the measured one "
                           f"'{attack.get('settings', {}).get('size')}'")
        shadow = self.plan.units[cfg.release].config
        n = len(shadow.members) + len(shadow.nonmembers)
        calibration = n * cfg.calibration_fraction
        crops = cfg.attack_train["epochs"] * cfg.attack_train["n_crops_train"] * (n - calibration)
        crops += cfg.attack_train["n_crops_test"] * calibration / 3  # forward only: about a third of a step
        return crops / rate

    def unit_seconds(self, unit: Unit) -> float | None:
        """GPU seconds of one unit; None when it uses no GPU; LookupError when its rate was not measured."""
        stage = UNIT_KINDS.lookup(unit.kind).stage
        if not self.grid.resources.get(stage, {}).get("gpu"):
            return None
        estimate = getattr(self, unit.kind, None)
        if estimate is None:
            raise LookupError(f"no estimate for {unit.kind} units")
        return estimate(unit)


def estimate_plan(plan: Plan, grid: Grid, check: GpuCheck) -> Estimate:
    """GPU seconds per unit kind of a plan on the measured device."""
    estimator = _Estimator(plan, grid, check)
    kinds: dict[str, KindEstimate] = {}
    for unit in plan.units.values():
        kind = kinds.setdefault(unit.kind, KindEstimate())
        kind.units += 1
        try:
            seconds = estimator.unit_seconds(unit)
        except LookupError as exc:
            kind.unmeasured[str(exc)] = kind.unmeasured.get(str(exc), 0) + 1
            continue
        if seconds is None:
            kind.cpu_only += 1
            continue
        kind.gpu_seconds += seconds
        part = estimator.part(unit)
        if part is not None:
            counts = kind.parts.setdefault(part, [0, 0.0])
            counts[0] += 1
            counts[1] += seconds
    notes = sorted(estimator.notes)
    if "model" in kinds and kinds["model"].gpu_seconds:
        try:  # the models' cost with deterministic kernels, as `train_model` asks for on a GPU (deterministic="warn")
            strict = sum(estimator.model(u, "train_det") for u in plan.of_kind("model")
                         if estimator.unit_seconds(u) is not None)
            notes.append(f"models at the `train` rate (cuDNN autotuned); at the deterministic `train_det` rate "
                         f"they take {strict / 3600:.1f} GPU-hours instead of {kinds['model'].gpu_seconds / 3600:.1f}")
        except LookupError:
            pass
    return Estimate(check, kinds, notes)


def format_estimate(estimate: Estimate) -> str:
    """The table and its assumptions, as `--dry-run` prints them."""
    check = estimate.check
    lines = [f"estimated GPU time on {check.device} (gpu-check of {check.data.get('date', '?')}, {check.source}):",
             f"  {'kind':<8} {'units':>6} {'GPU-hours':>10} {'per GPU unit':>13}  note"]
    for name, kind in estimate.kinds.items():
        on_gpu = kind.units - kind.cpu_only - sum(kind.unmeasured.values())
        per = f"{kind.gpu_seconds / on_gpu / 60:.1f} min" if on_gpu else "-"
        note = []
        if kind.cpu_only:
            note.append(f"{kind.cpu_only} use no GPU")
        note += [f"{n} not estimated: {why}" for why, n in sorted(kind.unmeasured.items())]
        lines.append(f"  {name:<8} {kind.units:>6} {kind.gpu_seconds / 3600:>10.1f} {per:>13}  {'; '.join(note)}")
        if len(kind.parts) > 1:
            for part, (units, seconds) in sorted(kind.parts.items()):
                lines.append(f"   ({part:<5} {int(units):>6} {seconds / 3600:>10.1f} {seconds / units / 60:>9.1f} min)")
    lines.append(f"  {'total':<8} {sum(k.units for k in estimate.kinds.values()):>6} {estimate.gpu_hours:>10.1f}")
    lines += ["assumptions:"] + [f"  - {a}" for a in (*ASSUMPTIONS, *estimate.notes)]
    return "\n".join(lines)


def print_estimate(plan: Plan, grid: Grid, gpu_check: str | None, results: str, stream=sys.stdout) -> Estimate:
    estimate = estimate_plan(plan, grid, load_gpu_check(gpu_check, results))
    if gpu_check is None and not any(k.units - k.cpu_only for k in estimate.kinds.values()):
        print("no stage of this grid asks for a GPU in `resources`: no GPU-hours to estimate", file=stream, flush=True)
    else:
        print(format_estimate(estimate), file=stream, flush=True)
    return estimate
