"""The plan: a grid expanded into the unique work units it needs, each keyed by a hash of its inputs.

Four kinds of unit form a DAG: `model` (train one segmentation model) -> `release` (its outputs on a query
set) -> `attack` (an attack fitted on a shadow's released outputs) -> `cell` (that attack scored on a
victim's released outputs = one leaderboard entry). A unit's key hashes its resolved config, which holds
the keys of the units it reads, so two grid cells that need the same model get the same key and the model
is trained once. Display and logging metadata (`meta`) is kept out of the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

from benchmark.data.splits import Manifest
from benchmark.data.synth import ensure_synthetic_dataset
from ray_jobs.spec import AttackSetting, DefenseSetting, Grid, Setting

PLAN_VERSION = 1
KINDS = ("model", "release", "attack", "cell")
NO_DEFENSE = DefenseSetting("none")


def unit_key(kind: str, config: dict[str, Any]) -> str:
    """A short, stable content hash: same kind and resolved config -> same key, on any machine."""
    blob = json.dumps({"kind": kind, "version": PLAN_VERSION, "config": config}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass
class Unit:
    kind: str
    key: str
    config: dict[str, Any]
    deps: tuple[str, ...]
    label: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSource:
    """Where a dataset's files are: a real root (a POSIX path on every node), or a `synthetic://` URI."""

    dataset: str
    root: str
    ids: tuple[str, ...]
    val_ids: tuple[str, ...]


SYNTHETIC = "synthetic"


def synthetic_root(dataset: str, n_train: int, n_val: int, size: tuple[int, int] | list[int], seed: int) -> str:
    """The root of a synthetic dataset as a URI naming its parameters, not a machine's folder: the data is
    deterministic, so each node regenerates the same bytes and nothing has to be shipped or shared."""
    query = urlencode({"n_train": n_train, "n_val": n_val, "size": f"{size[0]}x{size[1]}", "seed": seed})
    return f"{SYNTHETIC}://{dataset}?{query}"


def local_data_root(root: str, data_dir: Path) -> Path:
    """A DataSource root as a local folder; a synthetic one is written under `data_dir` on first use."""
    parts = urlsplit(root)
    if parts.scheme != SYNTHETIC:
        return Path(root)
    query = dict(parse_qsl(parts.query))
    height, width = (int(v) for v in query["size"].split("x"))
    synth = {"n_train": int(query["n_train"]), "n_val": int(query["n_val"]), "size": [height, width],
             "seed": int(query["seed"])}
    digest = hashlib.sha256(json.dumps(synth, sort_keys=True).encode()).hexdigest()[:10]
    return ensure_synthetic_dataset(parts.netloc, data_dir / f"synthetic-{parts.netloc}-{digest}",
                                    synth["n_train"], synth["n_val"], (height, width), synth["seed"])


@dataclass
class Plan:
    units: dict[str, Unit] = field(default_factory=dict)
    n_cells_requested: int = 0

    def add(self, unit: Unit) -> str:
        self.units.setdefault(unit.key, unit)
        return unit.key

    def of_kind(self, kind: str) -> list[Unit]:
        return [u for u in self.units.values() if u.kind == kind]

    def counts(self) -> dict[str, int]:
        """Unique units per kind next to the naive count (every cell trains its own victim and shadow)."""
        counts = {kind: len(self.of_kind(kind)) for kind in KINDS}
        counts["naive_models"] = 2 * self.n_cells_requested
        return counts

    def topological(self) -> list[Unit]:
        order = {kind: i for i, kind in enumerate(KINDS)}
        return sorted(self.units.values(), key=lambda u: (order[u.kind], u.key))


def _defense_json(defense: DefenseSetting) -> dict[str, Any]:
    return {"name": defense.name, "params": defense.params_dict}


class _Builder:
    """Adds the units of one (seed, setting, manifest) slice of the grid to a plan."""

    def __init__(self, grid: Grid, plan: Plan, sources: dict[str, DataSource]) -> None:
        self.grid, self.plan, self.sources = grid, plan, sources

    def model(self, source: DataSource, manifest: Manifest, role: str, arch: str, defense: DefenseSetting, seed: int) -> str:
        split = getattr(manifest, role)
        config = {
            "dataset": source.dataset,
            "root": source.root,
            "arch": arch,
            "train_ids": sorted(split.train),
            "heldout_ids": sorted(split.nonmembers),
            "train": dict(self.grid.train),
            "defense": _defense_json(defense),
            # a different seed per role keeps a shadow that happens to share data from being the victim
            "seed": seed if role == "victim" else seed + 10_000,
        }
        meta = {
            "dataset": source.dataset, "arch": arch, "role": role, "train_defense": defense.label,
            "overlap": manifest.overlap if role == "shadow" and manifest.setting == "dependent" else "n/a",
            "seed": seed, "n_train": len(split.train), "placebo": manifest.placebo and role == "victim",
            "setting": manifest.setting,
            "dp": defense.name == "dp_sgd",
        }
        label = f"{role} {arch} on {source.dataset} ({defense.label}{', placebo' if meta['placebo'] else ''})"
        return self.plan.add(Unit("model", unit_key("model", config), config, (), label, meta))

    def release(self, model_key: str, source: DataSource, manifest: Manifest, role: str) -> str:
        split = getattr(manifest, role)
        config = {
            "model": model_key,
            "dataset": source.dataset,
            "root": source.root,
            "members": sorted(split.members),
            "nonmembers": sorted(split.nonmembers),
            "image_size": self.grid.train.get("image_size"),
            "release": dict(self.grid.release),
        }
        label = f"outputs of {self.plan.units[model_key].label}"
        return self.plan.add(Unit("release", unit_key("release", config), config, (model_key,), label))

    def attack(self, shadow_release: str, attack: AttackSetting, defense: DefenseSetting, seed: int) -> str:
        config = {
            "release": shadow_release,
            "attack": attack.name,
            "representation": attack.representation,
            "output_defense": _defense_json(defense),
            "attack_train": dict(self.grid.attack_train) if attack.name == "patch" else {},
            "seed": seed,
        }
        label = f"{attack.name}/{attack.representation} on shadow outputs ({defense.label})"
        return self.plan.add(Unit("attack", unit_key("attack", config), config, (shadow_release,), label))

    def cell(self, attack_key: str, victim_release: str, defense: DefenseSetting, meta: dict[str, Any]) -> str:
        config = {
            "attack": attack_key,
            "release": victim_release,
            "output_defense": _defense_json(defense if defense.output_side else NO_DEFENSE),
            "seed": meta["seed"],
        }
        label = (
            f"{meta['attack']}/{meta['representation']} vs {meta['victim_arch']} on {meta['dataset']} "
            f"[{meta['setting']}, overlap {meta['shadow_overlap']}, {meta['defense_label']}"
            f"{', placebo' if meta['control'] == 'placebo' else ''}]"
        )
        return self.plan.add(Unit("cell", unit_key("cell", config), config, (attack_key, victim_release), label, meta))

    def slice(self, setting: Setting, manifest: Manifest, seed: int, defenses: Iterable[DefenseSetting], control: str) -> None:
        grid = self.grid
        victim_src, shadow_src = self.sources[setting.dataset], self.sources[setting.shadow_dataset]
        for victim_arch in grid.victim_archs:
            for shadow_arch in grid.shadow_archs_for(victim_arch):
                shadow_model = self.model(shadow_src, manifest, "shadow", shadow_arch, NO_DEFENSE, seed)
                shadow_release = self.release(shadow_model, shadow_src, manifest, "shadow")
                for defense in defenses:
                    victim_defense = NO_DEFENSE if defense.output_side else defense
                    victim_model = self.model(victim_src, manifest, "victim", victim_arch, victim_defense, seed)
                    victim_release = self.release(victim_model, victim_src, manifest, "victim")
                    # the adaptive attacker passes its shadow's outputs through the victim's output defense
                    shadow_defense = defense if defense.output_side and grid.adaptive else NO_DEFENSE
                    for attack in grid.attacks:
                        attack_key = self.attack(shadow_release, attack, shadow_defense, seed)
                        meta = {
                            "dataset": setting.dataset, "victim_arch": victim_arch,
                            "shadow_dataset": setting.shadow_dataset, "shadow_arch": shadow_arch,
                            "shadow_overlap": manifest.overlap if setting.kind == "dependent" else "n/a",
                            "defense": defense.name, "defense_params": json.dumps(defense.params_dict, sort_keys=True),
                            "defense_label": defense.label, "attack": attack.name,
                            "representation": attack.representation, "seed": seed, "control": control,
                            "setting": setting.kind, "adaptive": grid.adaptive,
                            "victim_model": victim_model,
                        }
                        self.cell(attack_key, victim_release, defense, meta)
                        self.plan.n_cells_requested += 1


def build_plan(grid: Grid, sources: dict[str, DataSource], manifests: dict[tuple, Manifest]) -> Plan:
    """Expand the grid. `manifests` maps (seed, setting, overlap, placebo) to its membership manifest."""
    plan = Plan()
    builder = _Builder(grid, plan, sources)
    for (seed, setting, _overlap, placebo), manifest in sorted(manifests.items(), key=lambda kv: str(kv[0])):
        if placebo:
            builder.slice(setting, manifest, seed, [NO_DEFENSE], control="placebo")
        else:
            builder.slice(setting, manifest, seed, grid.defenses, control="none")
    return plan
