"""Grid specs: a YAML file (or a built-in profile) validated into a `Grid`.

Validation happens once, on load, with messages that name the file, the key and the bad value, so a typo
fails in the first second instead of an hour into a cluster run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.data.labels import NUM_CLASSES
from benchmark.defenses.output import OUTPUT_DEFENSE_PARAMS, check_output_defense_params
from benchmark.defenses.training import TRAINING_DEFENSES, resolve_training_defense
from benchmark.errors import SegleakError
from benchmark.paths import project_root

PROFILES_DIR = project_root() / "ray_jobs" / "profiles"
DATASETS = ("cityscapes", "bdd100k", "mapillary")
ATTACKS = {"patch": ("slm", "concat", "posterior"), "loss_threshold": ("statistic",), "pixel_accuracy": ("statistic",)}
CONTROLS = ("placebo",)


@dataclass(frozen=True)
class DefenseSetting:
    """One defense column of the grid: a name and one combination of its parameters."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def output_side(self) -> bool:
        return self.name in OUTPUT_DEFENSE_PARAMS

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.name}({inner})" if inner else self.name


@dataclass(frozen=True)
class AttackSetting:
    name: str
    representation: str


@dataclass(frozen=True)
class Setting:
    """A victim dataset paired with the shadow's dataset: same dataset = dependent, else independent."""

    dataset: str
    shadow_dataset: str

    @property
    def kind(self) -> str:
        return "dependent" if self.dataset == self.shadow_dataset else "independent"


@dataclass(frozen=True)
class Grid:
    name: str
    source: str
    datasets: dict[str, Any]
    settings: tuple[Setting, ...]
    victim_archs: tuple[str, ...]
    shadow_archs: tuple[str, ...] | None
    overlaps: tuple[float, ...]
    defenses: tuple[DefenseSetting, ...]
    attacks: tuple[AttackSetting, ...]
    adaptive: bool
    controls: tuple[str, ...]
    seeds: tuple[int, ...]
    splits: dict[str, dict[str, int]]
    synthetic: dict[str, Any]
    train: dict[str, Any]
    attack_train: dict[str, Any]
    release: dict[str, Any]
    resources: dict[str, dict[str, float]]
    retries: int
    leakage_maps: bool = True
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def shadow_archs_for(self, victim_arch: str) -> tuple[str, ...]:
        return self.shadow_archs if self.shadow_archs else (victim_arch,)


_TOP_KEYS = {
    "name", "datasets", "settings", "victim_archs", "shadow_archs", "overlaps", "defenses", "attacks",
    "adaptive", "controls", "seeds", "splits", "synthetic", "train", "attack_train", "release", "resources",
    "retries", "leakage_maps",
}
_REQUIRED = ("name", "datasets", "settings", "victim_archs", "defenses", "attacks")
_TRAIN_KEYS = {"epochs", "batch_size", "lr", "optimizer", "weight_decay", "image_size", "precision", "accelerator"}
_ATTACK_TRAIN_KEYS = {"size", "crop", "n_crops_train", "n_crops_test", "epochs", "batch_size", "lr", "weight_decay"}
_RELEASE_KEYS = {"output_stride", "batch_size"}
_SPLIT_KEYS = {"victim_members", "victim_nonmembers", "shadow_members", "shadow_nonmembers"}
_SYNTH_KEYS = {"n_train", "n_val", "size", "seed"}
_RESOURCE_STAGES = {"train", "release", "attack", "cell"}
# allowed parameters come from the defenses themselves, so the grid cannot drift from what they accept
_DEFENSE_PARAMS = {
    **{name: set(params) for name, params in OUTPUT_DEFENSE_PARAMS.items()},
    **{name: required | optional for name, (required, optional) in TRAINING_DEFENSES.items()},
}


class _Checker:
    """Collects context (file, key path) so every error names where it happened."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> SegleakError:
        return SegleakError(f"grid {self.source}: {where}: {message}")

    def keys(self, where: str, mapping: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(mapping, dict):
            raise self.fail(where, f"expected a mapping, got {type(mapping).__name__}")
        unknown = sorted(set(mapping) - allowed)
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
        return mapping

    def choice(self, where: str, value: Any, allowed: tuple[str, ...] | set[str]) -> str:
        if value not in allowed:
            raise self.fail(where, f"unknown value {value!r} (known: {', '.join(sorted(allowed))})")
        return value

    def number(self, where: str, value: Any, low: float | None = None, high: float | None = None, integer: bool = False) -> Any:
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            raise self.fail(where, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise self.fail(where, f"value {value!r} is outside {bounds}")
        return value

    def listify(self, value: Any) -> list[Any]:
        return list(value) if isinstance(value, (list, tuple)) else [value]


def _defenses(check: _Checker, entries: Any) -> tuple[DefenseSetting, ...]:
    out: list[DefenseSetting] = []
    for i, entry in enumerate(check.listify(entries)):
        where = f"defenses[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise check.fail(where, "expected a defense name or a mapping with 'name'")
        name = check.choice(f"{where}.name", entry["name"], set(_DEFENSE_PARAMS))
        params = {k: v for k, v in entry.items() if k != "name"}
        check.keys(where, params, _DEFENSE_PARAMS[name])
        sweeps = {k: check.listify(v) for k, v in sorted(params.items())}
        for k, values in sweeps.items():
            for v in values:
                check.number(f"{where}.{k}", v, low=0, integer=k == "k")
        for combo in itertools.product(*sweeps.values()):
            setting = DefenseSetting(name, tuple(zip(sweeps.keys(), combo)))
            try:  # the defense's own validation, now rather than an hour into the run
                if setting.output_side:
                    check_output_defense_params(name, setting.params_dict, NUM_CLASSES)
                else:
                    resolve_training_defense(name, setting.params_dict, epochs=1, weight_decay=0.0)
            except SegleakError as exc:
                raise check.fail(where, str(exc)) from None
            out.append(setting)
    if len(set(out)) != len(out):
        raise check.fail("defenses", "a defense setting is listed twice")
    return tuple(out)


def _attacks(check: _Checker, entries: Any) -> tuple[AttackSetting, ...]:
    out: list[AttackSetting] = []
    for i, entry in enumerate(check.listify(entries)):
        where = f"attacks[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        check.keys(where, entry, {"name", "representation"})
        name = check.choice(f"{where}.name", entry.get("name"), set(ATTACKS))
        reps = check.listify(entry.get("representation", ATTACKS[name][0]))
        for rep in reps:
            out.append(AttackSetting(name, check.choice(f"{where}.representation", rep, ATTACKS[name])))
    return tuple(out)


def _validate(raw: Any, source: str) -> Grid:
    check = _Checker(source)
    check.keys("top level", raw, _TOP_KEYS)
    for key in _REQUIRED:
        if key not in raw:
            raise check.fail("top level", f"missing required key {key!r}")
    datasets = check.keys("datasets", raw["datasets"], set(DATASETS))
    for name, entry in datasets.items():
        check.keys(f"datasets.{name}", entry, {"root"})
        if "root" not in entry:
            raise check.fail(f"datasets.{name}", "missing 'root' (a path, or 'synthetic')")
    settings = []
    for i, entry in enumerate(check.listify(raw["settings"])):
        check.keys(f"settings[{i}]", entry, {"dataset", "shadow_dataset"})
        ds = check.choice(f"settings[{i}].dataset", entry.get("dataset"), set(datasets))
        shadow = check.choice(f"settings[{i}].shadow_dataset", entry.get("shadow_dataset", ds), set(datasets))
        settings.append(Setting(ds, shadow))
    victim_archs = tuple(str(a) for a in check.listify(raw["victim_archs"]))
    shadow_raw = raw.get("shadow_archs", "same")
    shadow_archs = None if shadow_raw == "same" else tuple(str(a) for a in check.listify(shadow_raw))
    overlaps = tuple(float(check.number("overlaps", v, 0.0, 1.0)) for v in check.listify(raw.get("overlaps", [0.0])))
    splits = check.keys("splits", raw.get("splits", {}), {"dependent", "independent"})
    for kind, sizes in splits.items():
        # independent sizes may be given per shadow dataset (the paper: BDD100K 4000, Mapillary 10000)
        check.keys(f"splits.{kind}", sizes, _SPLIT_KEYS | (set(DATASETS) if kind == "independent" else set()))
        for k, v in sizes.items():
            if k in DATASETS:
                for kk, vv in check.keys(f"splits.{kind}.{k}", v, _SPLIT_KEYS).items():
                    check.number(f"splits.{kind}.{k}.{kk}", vv, low=1, integer=True)
            else:
                check.number(f"splits.{kind}.{k}", v, low=1, integer=True)
    synthetic = check.keys("synthetic", raw.get("synthetic", {}), _SYNTH_KEYS)
    train = check.keys("train", raw.get("train", {}), _TRAIN_KEYS)
    attack_train = check.keys("attack_train", raw.get("attack_train", {}), _ATTACK_TRAIN_KEYS)
    release = check.keys("release", raw.get("release", {}), _RELEASE_KEYS)
    resources = check.keys("resources", raw.get("resources", {}), _RESOURCE_STAGES)
    for stage, res in resources.items():
        check.keys(f"resources.{stage}", res, {"cpu", "gpu"})
        for k, v in res.items():
            check.number(f"resources.{stage}.{k}", v, low=0)
    controls = tuple(check.choice("controls", c, CONTROLS) for c in check.listify(raw.get("controls", [])))
    seeds = tuple(int(check.number("seeds", s, integer=True)) for s in check.listify(raw.get("seeds", [0])))
    adaptive = raw.get("adaptive", True)
    if not isinstance(adaptive, bool):
        raise check.fail("adaptive", f"expected true or false, got {adaptive!r}")
    leakage_maps = raw.get("leakage_maps", True)
    if not isinstance(leakage_maps, bool):
        raise check.fail("leakage_maps", f"expected true or false, got {leakage_maps!r}")
    return Grid(
        name=str(raw["name"]),
        source=source,
        datasets=datasets,
        settings=tuple(settings),
        victim_archs=victim_archs,
        shadow_archs=shadow_archs,
        overlaps=overlaps,
        defenses=_defenses(check, raw["defenses"]),
        attacks=_attacks(check, raw["attacks"]),
        adaptive=adaptive,
        controls=controls,
        seeds=seeds,
        splits=splits,
        synthetic=synthetic,
        train=train,
        attack_train=attack_train,
        release=release,
        resources=resources,
        retries=int(check.number("retries", raw.get("retries", 1), low=0, integer=True)),
        leakage_maps=leakage_maps,
        raw=raw,
    )


def load_grid(profile: str | None = None, grid_file: str | Path | None = None) -> Grid:
    """Load a built-in profile by name or a user's grid file; SegleakError on anything malformed."""
    if grid_file is not None:
        path = Path(grid_file)
        if not path.is_file():
            raise SegleakError(f"grid file {path} does not exist")
    else:
        name = profile or "default"
        path = PROFILES_DIR / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            raise SegleakError(f"unknown profile {name!r} (known: {known})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SegleakError(f"grid {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    grid = _validate(raw, str(path))
    _check_archs(grid)
    return grid


def _check_archs(grid: Grid) -> None:
    from benchmark.models.builder import list_architectures

    known = set(list_architectures())
    for arch in grid.victim_archs + (grid.shadow_archs or ()):
        if arch not in known:
            raise SegleakError(f"grid {grid.source}: unknown architecture {arch!r} (known: {', '.join(sorted(known))})")
