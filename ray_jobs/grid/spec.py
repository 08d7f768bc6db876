"""Grid specs: a YAML file (or a built-in profile) validated into a typed `Grid`.

Validation happens once, on load, with messages that name the file, the key and the bad value, so a typo
fails in the first second instead of an hour into a cluster run. Component names and their parameters come
from the registries (benchmark.registry): a defense, attack or dataset declares them once, in its own file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.attacks.patch_attack import ATTACK_TRAIN_PARAMS
from benchmark.data.adapters import DatasetAdapter, get_adapter
from benchmark.data.roots import SYNTHETIC
from benchmark.data.splits import SPLIT_PARAMS, SplitSpec
from benchmark.data.synth import PARAMS as SYNTH_PARAMS
from benchmark.errors import SegleakError
from benchmark.models.release import RELEASE_PARAMS, released_size
from benchmark.models.train import TRAIN_PARAMS
from benchmark.needs import REFERENCE_SET, REFERENCES
from benchmark.params import Param, check_params
from benchmark.safe_paths import check_name
from ray_jobs.grid.audit_block import AuditSpec, parse_audit
from ray_jobs.grid.entries import (CONTROLS, EVERYWHERE, AttackSetting, Checker, DefenseSetting, Only, parse_attacks,
                                   parse_defenses, parse_only)
from ray_jobs.grid.file import PROFILES_DIR, read_grid

RESOURCE_STAGES = ("train", "release", "attack", "cell")
MAX_SEEDS = 1000  # each seed repeats the whole grid (manifests, models, cells): 10,000 would exhaust memory
RESOURCE_PARAMS = {"cpu": Param(float, default=1.0, low=0.0), "gpu": Param(float, default=0.0, low=0.0)}
# The grid's `references` block: the attacker's reference banks (planned by ray_jobs.grid.bank).
REFERENCE_PARAMS: dict[str, Param] = {
    "count": Param(int, default=8, low=3, help="reference models per bank (offline, and online unless set)"),
    "online_count": Param(int, default=None, nullable=True, low=3, help="the online bank's size (null: count)"),
    "by_defense": Param(dict, default={}, help="smaller banks under some training defenses: {name or label: count}"),
    "placebo_count": Param(int, default=2, low=1, help="placebo models per online bank for the LiRA protocol's placebo"),
}


@dataclass(frozen=True)
class Setting:
    """A victim dataset paired with the shadow's dataset: same dataset = dependent, else independent."""

    dataset: str
    shadow_dataset: str

    @property
    def kind(self) -> str:
        return "dependent" if self.dataset == self.shadow_dataset else "independent"


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of the grid: its name in the grid, its adapter's spec (type and options) and its root."""

    name: str
    spec: dict[str, Any]
    root: str

    @property
    def adapter(self) -> DatasetAdapter:
        return get_adapter(self.spec)

    @property
    def synthetic(self) -> bool:
        return self.root == SYNTHETIC


@dataclass(frozen=True)
class Grid:
    name: str
    source: str
    datasets: dict[str, DatasetEntry]
    settings: tuple[Setting, ...]
    victim_archs: tuple[str, ...]
    shadow_archs: tuple[str, ...] | None
    overlaps: tuple[float, ...]
    defenses: tuple[DefenseSetting, ...]
    attacks: tuple[AttackSetting, ...]
    adaptive: bool
    controls: tuple[str, ...]
    seeds: tuple[int, ...]
    splits: dict[str, Any]
    group_split: bool
    synthetic: dict[str, Any]
    train: dict[str, Any]
    attack_train: dict[str, Any]
    release: dict[str, Any]
    calibration_fraction: float
    resources: dict[str, dict[str, float]]
    retries: int
    leakage_maps: bool = True
    blind: bool = True
    references: dict[str, Any] = field(default_factory=dict)  # the reference banks' sizes (REFERENCE_PARAMS)
    lira_protocol: Only | None = None  # where the LiRA protocol runs (None: nowhere)
    placebo_models: int = 1  # placebo victims per placebo recipe without a training-side defense (grid.plan)
    audit: AuditSpec | None = None  # one-run privacy audits (ray_jobs.grid.audit_block)

    def shadow_archs_for(self, victim_arch: str) -> tuple[str, ...]:
        return self.shadow_archs if self.shadow_archs else (victim_arch,)

    def split_spec(self, setting: Setting, extra: dict[str, int] | None = None) -> SplitSpec:
        """The split sizes and options of a setting (independent sizes may be given per shadow dataset)."""
        block = dict(self.splits.get(setting.kind, {}))
        block.update(block.pop("per_shadow", {}).get(setting.shadow_dataset, {}))
        return SplitSpec(**block, group_split=self.group_split, **(extra or {}))


_TOP: dict[str, Param] = {
    "name": Param(str),
    "datasets": Param(dict),
    "settings": Param(list),
    "victim_archs": Param(list),
    "shadow_archs": Param(object, default=None, nullable=True, help="'same' (the victim's) or a list"),
    "overlaps": Param(list, default=[0.0]),
    "defenses": Param(list),
    "attacks": Param(list),
    "adaptive": Param(bool, default=True),
    "controls": Param(list, default=[]),
    "seeds": Param(list, default=[0]),
    "splits": Param(dict, default={}),
    "group_split": Param(bool, default=True, help="split and bootstrap by whole groups (cities, sequences)"),
    "synthetic": Param(dict, default={}),
    "train": Param(dict),
    "attack_train": Param(dict, default={}),
    "release": Param(dict, default={}),
    "calibration_fraction": Param(float, default=0.25, low=0.0, high=0.5, low_open=True,
                                  help="part of the shadow's query set held out to calibrate each attack"),
    "resources": Param(dict, default={}),
    "retries": Param(int, default=1, low=0),
    "leakage_maps": Param(bool, default=True),
    "blind": Param(bool, default=True, help="the blind baseline and shift test of every setting"),
    "references": Param(dict, default={}, help="reference banks for LiRA, RMIA, calibrated loss: {count, online_count}"),
    "lira_protocol": Param(object, default=False, help="the LiRA evaluation protocol on each online reference bank: "
                           "true, or {defenses: [...]} for the banks under those defenses only"),
    "placebo_models": Param(int, default=1, low=1, help="placebo victims (training seeds) per setting and recipe "
                            "without a training-side defense: the placebo verdict's spread between models"),
    "audit": Param(dict, default=None, nullable=True, help="one-run privacy audits (ray_jobs/grid/audit.py)"),
}


def _datasets(check: Checker, raw: dict[str, Any]) -> dict[str, DatasetEntry]:
    out = {}
    if not raw:
        raise check.fail("datasets", "expected at least one dataset")
    for name, entry in raw.items():
        check(check_name, "datasets", name)  # the leakage maps are named after it
        where = f"datasets.{name}"
        if not isinstance(entry, dict):
            raise check.fail(where, f"expected a mapping with 'root', got {entry!r}")
        if "root" not in entry:
            raise check.fail(where, "missing 'root' (a path, or 'synthetic')")
        root = entry["root"]
        if not isinstance(root, str) or not root:
            raise check.fail(f"{where}.root", f"expected a path or 'synthetic', got {root!r}")
        spec = {k: v for k, v in entry.items() if k != "root"}
        spec.setdefault("type", name)
        adapter = check.at(where, get_adapter, spec)
        out[name] = DatasetEntry(name, adapter.spec, root)
    return out


def _splits(check: Checker, raw: dict[str, Any], shadow_names: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = sorted(set(raw) - {"dependent", "independent"})
    if unknown:
        raise check.fail("splits", f"unknown key {unknown[0]!r} (known: dependent, independent)")
    for kind, block in raw.items():
        if not isinstance(block, dict):
            raise check.fail(f"splits.{kind}", f"expected a mapping, got {block!r}")
        # independent sizes may be given per shadow dataset (the paper: BDD100K 4000, Mapillary 10000)
        per_shadow = {k: v for k, v in block.items() if k in shadow_names and kind == "independent"}
        flat = {k: v for k, v in block.items() if k not in per_shadow}
        values = check(check_params, f"splits.{kind}", SPLIT_PARAMS, flat)
        values["per_shadow"] = {}  # only the keys given there override the block's
        for name, sizes in per_shadow.items():
            checked = check(check_params, f"splits.{kind}.{name}", SPLIT_PARAMS, sizes)
            values["per_shadow"][name] = {k: v for k, v in checked.items() if k in sizes}
        out[kind] = values
    return out


def _resources(check: Checker, raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    unknown = sorted(set(raw) - set(RESOURCE_STAGES))
    if unknown:
        raise check.fail("resources", f"unknown key {unknown[0]!r} (known: {', '.join(RESOURCE_STAGES)})")
    return {stage: check(check_params, f"resources.{stage}", RESOURCE_PARAMS, raw.get(stage, {}))
            for stage in RESOURCE_STAGES}


def _check_crop(check: Checker, grid: Grid) -> None:
    """A patch crop larger than the released map would be clipped silently: refuse it on load."""
    if not any(a.attack.uses_attack_train for a in grid.attacks):
        return
    size = grid.train.get("image_size") or (grid.synthetic.get("size") if all(
        d.synthetic for d in grid.datasets.values()) else None)
    if size is None:
        return  # known only once the images are read: the fit unit refuses it then
    h, w = check(released_size, size[0], size[1], grid.release["output_stride"])
    if grid.attack_train["crop"] > min(h, w):
        raise check.fail("attack_train.crop", f"{grid.attack_train['crop']} is larger than the released {h}x{w} maps "
                         f"(images {size[0]}x{size[1]} at output_stride {grid.release['output_stride']})")


def _check_reference_sets(check: Checker, grid: Grid) -> None:
    """A defense that trains on non-member reference images (distillation, adversarial regularisation) needs
    `splits.<kind>.reference` > 0 in every setting it runs in: refuse on load, not an hour into a run."""
    for entry in grid.defenses:
        if REFERENCE_SET not in entry.defense.needs:
            continue
        for setting in grid.settings:
            if entry.only.settings and setting.kind not in entry.only.settings:
                continue
            if not grid.split_spec(setting).reference:
                raise check.fail(f"splits.{setting.kind}.reference",
                                 f"defense {entry.label} trains on a reference set of non-member images: set "
                                 f"splits.{setting.kind}.reference to their number per role (it is 0)")


def validate(raw: Any, source: str) -> Grid:
    check = Checker(source)
    top = check(check_params, "top level", _TOP, raw)
    check(check_name, "name", top["name"])
    datasets = _datasets(check, top["datasets"])
    settings = []
    for i, entry in enumerate(check.items("settings", top["settings"], dict)):
        unknown = sorted(set(entry) - {"dataset", "shadow_dataset"})
        if unknown:
            raise check.fail(f"settings[{i}]", f"unknown key {unknown[0]!r} (known: dataset, shadow_dataset)")
        ds = check(Param(str, choices=tuple(datasets)).check, f"settings[{i}].dataset", entry.get("dataset"))
        shadow = check(Param(str, choices=tuple(datasets)).check, f"settings[{i}].shadow_dataset",
                       entry.get("shadow_dataset", ds))
        settings.append(Setting(ds, shadow))
    class_counts = {datasets[s.dataset].adapter.num_classes for s in settings}
    shadow_counts = {datasets[s.shadow_dataset].adapter.num_classes for s in settings}
    for s in settings:
        n, m = datasets[s.dataset].adapter.num_classes, datasets[s.shadow_dataset].adapter.num_classes
        if n != m:
            raise check.fail("settings", f"victim {s.dataset} has {n} classes but shadow {s.shadow_dataset} has {m}: "
                             "an attack trained on one cannot read the other's posteriors")
    victim_archs = tuple(check.items("victim_archs", top["victim_archs"], str))
    shadow_raw = top.get("shadow_archs", "same")
    shadow_archs = None if shadow_raw == "same" else tuple(check.items("shadow_archs", shadow_raw, str))
    _check_archs(check, victim_archs + (shadow_archs or ()))
    synthetic = check(check_params, "synthetic", SYNTH_PARAMS, top["synthetic"])
    if min(synthetic["size"]) < 16:
        raise check.fail("synthetic.size", f"{synthetic['size']} is too small: both sides must be >= 16")
    train = check(check_params, "train", TRAIN_PARAMS, top["train"])
    grid = Grid(
        name=top["name"],
        source=source,
        datasets=datasets,
        settings=tuple(settings),
        victim_archs=victim_archs,
        shadow_archs=shadow_archs,
        overlaps=tuple(check.items("overlaps", top["overlaps"], float, 0.0, 1.0)),
        defenses=parse_defenses(check, check.items("defenses", top["defenses"], object), class_counts | shadow_counts),
        attacks=parse_attacks(check, check.items("attacks", top["attacks"], object)),
        adaptive=top["adaptive"],
        controls=tuple(check.items("controls", top["controls"], str, choices=CONTROLS, nonempty=False)),
        seeds=_seeds(check, top["seeds"]),
        splits=_splits(check, top["splits"], {s.shadow_dataset for s in settings}),
        group_split=top["group_split"],
        synthetic=synthetic,
        train=train,
        attack_train=check(check_params, "attack_train", ATTACK_TRAIN_PARAMS, top["attack_train"]),
        release=check(check_params, "release", RELEASE_PARAMS, top["release"]),
        calibration_fraction=top["calibration_fraction"],
        resources=_resources(check, top["resources"]),
        retries=top["retries"],
        leakage_maps=top["leakage_maps"],
        blind=top["blind"],
        references=check(check_params, "references", REFERENCE_PARAMS, top["references"]),
        lira_protocol=_protocol(check, top["lira_protocol"]),
        placebo_models=top["placebo_models"],
    )
    if len(set(grid.seeds)) != len(grid.seeds) or len(set(grid.overlaps)) != len(grid.overlaps):
        raise check.fail("seeds/overlaps", "a value is listed twice")
    _check_crop(check, grid)
    _check_reference_attacks(check, grid)
    _check_reference_sets(check, grid)
    _check_bank_sizes(check, grid)
    if top.get("audit") is not None:
        grid = dataclasses.replace(grid, audit=parse_audit(check, top["audit"], grid))
    return grid


def _seeds(check: Checker, raw: Any) -> tuple[int, ...]:
    seeds = tuple(check.items("seeds", raw, int, low=0))
    if len(seeds) > MAX_SEEDS:
        raise check.fail("seeds", f"{len(seeds)} values, at most {MAX_SEEDS}: each seed repeats the whole grid "
                         "(its splits, models and cells)")
    return seeds


def _protocol(check: Checker, raw: Any) -> Only | None:
    if isinstance(raw, bool):
        return EVERYWHERE if raw else None
    values = check(check_params, "lira_protocol", {"defenses": Param(list, item=str)}, raw)
    return parse_only(check, "lira_protocol", {"only": values}, attack=True)


def _check_bank_sizes(check: Checker, grid: Grid) -> None:
    """`references.by_defense` names training defenses of the grid (by name, or one setting by its label), each
    with a bank of 3 or more."""
    trained = {n for d in grid.defenses if not d.output_side for n in (d.name, d.label)}
    for name, count in grid.references["by_defense"].items():
        if name not in trained:
            raise check.fail(f"references.by_defense.{name}", f"not a training defense of this grid "
                             f"({', '.join(sorted(trained)) or 'none'})")
        check(Param(int, low=3).check, f"references.by_defense.{name}", count)


def _check_reference_attacks(check: Checker, grid: Grid) -> None:
    """Reference banks are drawn from the victim's dataset: refuse a reference attack that would run in an
    independent setting (its pool and the victim's queries would lie in two datasets)."""
    independent = any(s.kind == "independent" for s in grid.settings)
    for attack in grid.attacks:
        if REFERENCES in attack.attack.requirements() and independent and (
                not attack.only.settings or "independent" in attack.only.settings):
            raise check.fail(f"attacks ({attack.label})", "reference attacks run in the dependent setting only: "
                             "add only: {settings: [dependent]} to the entry")


def load_grid(profile: str | None = None, grid_file: str | Path | None = None) -> Grid:
    """Load a built-in profile by name or a user's grid file; SegleakError on anything malformed."""
    if grid_file is not None:
        path = Path(grid_file)
        if not path.is_file():
            raise SegleakError(f"grid file {path} does not exist")
    else:
        name = check_name("--profile", profile or "default")
        path = PROFILES_DIR / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            raise SegleakError(f"unknown profile {name!r} (known: {known})")
    return validate(read_grid(path), str(path))


def _check_archs(check: Checker, archs: tuple[str, ...]) -> None:
    from benchmark.models.builder import list_architectures

    known = set(list_architectures())
    for arch in archs:
        check(check_name, "victim_archs/shadow_archs", arch)
        if arch not in known:
            raise check.fail("victim_archs/shadow_archs", f"unknown architecture {arch!r} (known: {', '.join(sorted(known))})")
