"""The plan: a grid expanded into the unique work units it needs, each keyed by a hash of its inputs.

Units form a DAG: `model` (train one segmentation model) -> `release` (its outputs on a query set) -> `fit`
(an attack fitted on the attacker's data) -> `cell` (that attack scored on a victim's released outputs = one
leaderboard entry); `blind` (a setting's blind baseline) reads the data alone. A unit's key hashes its typed
config, which holds the keys of the units it reads, so two grid cells that need the same model get the same
key and the model is trained once. Display and logging metadata (`meta`) is kept out of the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from benchmark.data.splits import ImageIndex, Manifest
from benchmark.data.synth import SynthSpec, ensure_synthetic_dataset
from ray_jobs.spec import NO_DEFENSE, AttackSetting, DefenseSetting, Grid, Setting
from ray_jobs.units.base import code_versions, config_json
from ray_jobs.units.blind import BlindConfig, BlindMeta
from ray_jobs.units.cell import CellConfig, CellMeta
from ray_jobs.units.fit import FitConfig
from ray_jobs.units.model import ModelConfig, ModelMeta
from ray_jobs.units.release import ReleaseConfig

PLAN_VERSION = 2
PLACEBO_MODEL_SEED = 50_000  # placebo victim r > 0 of a recipe trains with seed + r * this (r = 0: the seed)
SYNTHETIC = "synthetic"


def unit_key(kind: str, config: Any) -> str:
    """A short, stable content hash: same kind, resolved config and code versions -> same key, on any machine."""
    typed = hasattr(config, "__dataclass_fields__")
    content: dict[str, Any] = {"kind": kind, "version": PLAN_VERSION, "config": config_json(config) if typed else config}
    if typed and (versions := code_versions(kind, config)):
        content["code"] = versions
    blob = json.dumps(content, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass
class Unit:
    kind: str
    key: str
    config: Any  # the kind's typed config (a frozen dataclass)
    deps: tuple[str, ...]
    label: str
    meta: Any = None  # the kind's typed display metadata, kept out of the key

    @property
    def config_dict(self) -> dict[str, Any]:
        return config_json(self.config)


@dataclass(frozen=True)
class DataSource:
    """A grid dataset: its adapter spec, its root (a POSIX path on every node, or a `synthetic://` URI) and
    its image ids by split with their groups."""

    name: str
    spec: dict[str, Any]
    root: str
    index: ImageIndex


def synthetic_root(spec: SynthSpec) -> str:
    """The root of a synthetic dataset as a URI naming its parameters, not a machine's folder: the data is
    deterministic, so each node regenerates the same bytes and nothing has to be shipped or shared."""
    return f"{SYNTHETIC}://{spec.dataset['type']}?{urlencode({'spec': json.dumps(spec.to_json(), sort_keys=True)})}"


def local_data_root(root: str, data_dir: Path) -> Path:
    """A DataSource root as a local folder; a synthetic one is written under `data_dir` on first use."""
    parts = urlsplit(root)
    if parts.scheme != SYNTHETIC:
        return Path(root)
    values = json.loads(dict(parse_qsl(parts.query))["spec"])
    spec = SynthSpec.of(values.pop("dataset"), **values)
    digest = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:10]
    return ensure_synthetic_dataset(spec, data_dir / f"synthetic-{parts.netloc}-{digest}")


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
        counts: dict[str, int] = {}
        for unit in self.units.values():
            counts[unit.kind] = counts.get(unit.kind, 0) + 1
        counts["naive_models"] = 2 * self.n_cells_requested
        return counts

    def topological(self) -> list[Unit]:
        """Units ordered so that every unit comes after the units it reads."""
        order: list[Unit] = []
        state: dict[str, int] = {}
        for root in sorted(self.units):
            stack = [(root, iter(self.units[root].deps))]
            if state.get(root):
                continue
            state[root] = 1
            while stack:
                key, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    stack.pop()
                    state[key] = 2
                    order.append(self.units[key])
                elif not state.get(dep):
                    state[dep] = 1
                    stack.append((dep, iter(self.units[dep].deps)))
        return order


class _Builder:
    """Adds the units of one (seed, setting, manifest) slice of the grid to a plan."""

    def __init__(self, grid: Grid, plan: Plan, sources: dict[str, DataSource]) -> None:
        self.grid, self.plan, self.sources = grid, plan, sources
        self._scored: dict[int, tuple[list[str], list[str]]] = {}

    def scored(self, manifest: Manifest) -> tuple[list[str], list[str]]:
        """`manifest.scored()` once per manifest: it scans every query image, and a manifest has many cells."""
        if id(manifest) not in self._scored:
            self._scored[id(manifest)] = manifest.scored()
        return self._scored[id(manifest)]

    def model(self, source: DataSource, manifest: Manifest, role: str, arch: str, defense: DefenseSetting,
              seed: int, replicate: int = 0) -> str:
        split = getattr(manifest, role)
        needs = defense.defense.needs
        teacher = self.model(source, manifest, role, arch, NO_DEFENSE, seed, replicate) if "teacher" in needs else None
        config = ModelConfig(
            dataset=source.spec, root=source.root, arch=arch, train_ids=sorted(split.train),
            heldout_ids=sorted(split.nonmembers), train=dict(self.grid.train), defense=defense.to_json(),
            # a different seed per role keeps a shadow that happens to share data from being the victim
            seed=(seed + replicate * PLACEBO_MODEL_SEED) if role == "victim" else seed + 10_000,
            reference_ids=sorted(manifest.pool(f"{role}_reference")) if "reference_set" in needs else [],
            teacher=teacher,
        )
        placebo = manifest.placebo and role == "victim"
        meta = ModelMeta(
            dataset=source.name, arch=arch, role=role, train_defense=defense.label,
            overlap=manifest.overlap if role == "shadow" and manifest.setting == "dependent" else "n/a",
            seed=seed, n_train=len(split.train), placebo=placebo, setting=manifest.setting,
        )
        placebo_label = f", placebo{f' {replicate}' if replicate else ''}" if placebo else ""
        label = f"{role} {arch} on {source.name} ({defense.label}{placebo_label})"
        return self.plan.add(Unit("model", unit_key("model", config), config, (teacher,) if teacher else (), label, meta))

    def release(self, model_key: str, source: DataSource, manifest: Manifest, role: str) -> str:
        split = getattr(manifest, role)
        config = ReleaseConfig(
            model=model_key, dataset=source.spec, root=source.root, members=sorted(split.members),
            nonmembers=sorted(split.nonmembers), image_size=self.grid.train.get("image_size"),
            release=dict(self.grid.release),
        )
        label = f"outputs of {self.plan.units[model_key].label}"
        return self.plan.add(Unit("release", unit_key("release", config), config, (model_key,), label))

    def fit(self, shadow_release: str, attack: AttackSetting, defense: DefenseSetting, seed: int) -> str:
        config = FitConfig(
            release=shadow_release, attack=attack.to_json(), output_defense=defense.to_json(),
            attack_train=dict(self.grid.attack_train) if attack.attack.uses_attack_train else {},
            calibration_fraction=self.grid.calibration_fraction, seed=seed,
        )
        label = f"{attack.label} fitted on shadow outputs ({defense.label})"
        return self.plan.add(Unit("fit", unit_key("fit", config), config, (shadow_release,), label))

    def cell(self, fit_key: str, victim_release: str, victim_model: str, defense: DefenseSetting,
             manifest: Manifest, source: DataSource, meta: CellMeta, population: str | None = None) -> str:
        members, nonmembers = self.scored(manifest)
        config = CellConfig(
            fit=fit_key, release=victim_release, victim_model=victim_model, dataset=source.spec,
            output_defense=(defense if defense.output_side else NO_DEFENSE).to_json(),
            scored_ids=sorted(members + nonmembers), seed=meta.seed, population=population,
        )
        label = (f"{meta.attack_label} vs {meta.victim_arch} on {meta.dataset} [{meta.setting}, overlap "
                 f"{meta.shadow_overlap}, {meta.defense_label}{', placebo' if meta.control == 'placebo' else ''}"
                 f"{f' {meta.placebo_model}' if meta.placebo_model else ''}]")
        deps = (fit_key, victim_release, victim_model, *((population,) if population else ()))
        return self.plan.add(Unit("cell", unit_key("cell", config), config, deps, label, meta))

    def blind(self, setting: Setting, manifest: Manifest, seed: int) -> str:
        victim, shadow = self.sources[setting.dataset], self.sources[setting.shadow_dataset]
        members, nonmembers = self.scored(manifest)
        config = BlindConfig(
            dataset=victim.spec, root=victim.root, members=sorted(members), nonmembers=sorted(nonmembers),
            shadow_dataset=shadow.spec, shadow_root=shadow.root, shadow_members=sorted(manifest.shadow.members),
            shadow_nonmembers=sorted(manifest.shadow.nonmembers), image_size=self.grid.train.get("image_size"),
            seed=seed,
        )
        meta = BlindMeta(dataset=setting.dataset, shadow_dataset=setting.shadow_dataset, setting=setting.kind,
                         seed=seed, overlap=manifest.overlap if setting.kind == "dependent" else "n/a")
        label = f"blind baseline, {setting.kind} {setting.dataset} <- {setting.shadow_dataset}"
        return self.plan.add(Unit("blind", unit_key("blind", config), config, (), label, meta))

    def placebo_models(self, control: str, defense: DefenseSetting) -> int:
        """Victims per (slice, defense setting): `placebo_models` placebo victims (training draws) where the
        recipe has no training-side defense (output defenses reuse them), one elsewhere (each costs a training)."""
        untrained = defense.output_side or defense.name == NO_DEFENSE.name
        return self.grid.placebo_models if control == "placebo" and untrained else 1

    def slice(self, setting: Setting, manifest: Manifest, seed: int, control: str) -> None:
        from ray_jobs.bank import BankPlanner

        grid = self.grid
        banks = BankPlanner(self)
        victim_src, shadow_src = self.sources[setting.dataset], self.sources[setting.shadow_dataset]
        where = {"overlap": manifest.overlap, "setting": setting.kind, "control": control}
        for victim_arch in grid.victim_archs:
            for shadow_arch in grid.shadow_archs_for(victim_arch):
                for defense, replicate in ((d, r) for d in grid.defenses if d.only.allows(victim_arch, **where)
                                           for r in range(self.placebo_models(control, d))):
                    trained_with = NO_DEFENSE if defense.output_side else defense
                    victim_model = self.model(victim_src, manifest, "victim", victim_arch, trained_with, seed, replicate)
                    victim_release = self.release(victim_model, victim_src, manifest, "victim")
                    attacks = [a for a in grid.attacks
                               if a.only.allows(victim_arch, **where, defense=defense.name, defense_label=defense.label)]
                    # the adaptive attacker trains its shadow (and its reference models) with the victim's
                    # training defense and passes their outputs through the victim's output defense
                    attacker_trains = trained_with if grid.adaptive else NO_DEFENSE
                    shadow_release = None
                    if any("shadow" in a.attack.requirements() for a in attacks):
                        shadow_model = self.model(shadow_src, manifest, "shadow", shadow_arch, attacker_trains, seed)
                        shadow_release = self.release(shadow_model, shadow_src, manifest, "shadow")
                    seen = defense if defense.output_side and grid.adaptive else NO_DEFENSE
                    for attack in attacks:
                        meta = CellMeta(
                            dataset=setting.dataset, victim_arch=victim_arch, shadow_dataset=setting.shadow_dataset,
                            shadow_arch=shadow_arch,
                            shadow_overlap=manifest.overlap if setting.kind == "dependent" else "n/a",
                            defense=defense.name, defense_params=json.dumps(defense.params_dict, sort_keys=True),
                            defense_label=defense.label, attack=attack.name, representation=attack.representation,
                            attack_label=attack.label, seed=seed, control=control, setting=setting.kind,
                            adaptive=grid.adaptive, placebo_model=replicate,
                        )
                        self.plan.n_cells_requested += 1
                        if "references" not in attack.attack.requirements():
                            fit_key = self.fit(shadow_release, attack, seen, seed)
                            self.cell(fit_key, victim_release, victim_model, defense, manifest, victim_src, meta)
                            continue
                        fit_key = banks.victim_fit(attack, seen, attacker_trains, victim_src, manifest, victim_arch, seed)
                        population = (banks.population_release(victim_model, victim_src, manifest)
                                      if "population" in attack.attack.requirements() else None)
                        self.cell(fit_key, victim_release, victim_model, defense, manifest, victim_src, meta, population)
                        if grid.lira_protocol and control == "none":
                            banks.protocol(attack, seen, attacker_trains, victim_src, manifest, meta)


def build_plan(grid: Grid, sources: dict[str, DataSource], manifests: dict[tuple, Manifest]) -> Plan:
    """Expand the grid. `manifests` maps (seed, setting, overlap, placebo) to its membership manifest."""
    plan = Plan()
    builder = _Builder(grid, plan, sources)
    for (seed, setting, _overlap, placebo), manifest in sorted(manifests.items(), key=lambda kv: str(kv[0])):
        builder.slice(setting, manifest, seed, control="placebo" if placebo else "none")
    if grid.blind:
        first: dict[tuple, Manifest] = {}
        for (seed, setting, overlap, placebo), manifest in sorted(manifests.items(), key=lambda kv: str(kv[0])):
            if not placebo and ((seed, setting) not in first or overlap < first[(seed, setting)].overlap):
                first[(seed, setting)] = manifest
        for (seed, setting), manifest in first.items():
            builder.blind(setting, manifest, seed)
    if grid.audit is not None:
        from ray_jobs.audit import add_audits  # it builds on this module's units

        add_audits(builder, manifests)
    return plan
