"""The one place where ids become units. Every planner (the grid's slices in ray_jobs.grid.plan, the reference
banks in .bank, the audits in .audit) says which images a model trains on and what a release, fit or cell
reads; the builder adds the grid's recipe, provides what a training defense needs (`TRAINING_INPUTS`, one entry
per token of benchmark.needs.TRAINING_NEEDS) and keys the unit. A new training-defense input is its token's
declaration there and its entry here; no planner changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.data.splits import Manifest
from benchmark.needs import REFERENCE_SET, TEACHER
from ray_jobs.grid.entries import NO_DEFENSE, AttackSetting, DefenseSetting
from ray_jobs.grid.sources import DataSource
from ray_jobs.grid.spec import Grid
from ray_jobs.units.base import Plan, Unit
from ray_jobs.units.kinds.blind import BlindConfig, BlindMeta
from ray_jobs.units.kinds.cell import CellConfig, CellMeta
from ray_jobs.units.kinds.fit import FitConfig
from ray_jobs.units.kinds.model import ModelConfig, ModelMeta
from ray_jobs.units.kinds.release import ReleaseConfig

ROLE_SEED_OFFSET = {"victim": 0, "shadow": 10_000}  # a shadow that happens to share data is not the victim
PLACEBO_MODEL_SEED = 50_000  # placebo victim r > 0 of a recipe trains with seed + r * this (r = 0: the seed)


@dataclass(frozen=True)
class ModelRequest:
    """What a planner decides about one model under one training defense; the builder adds the rest."""

    source: DataSource
    arch: str
    train_ids: Sequence[str]
    heldout_ids: Sequence[str]
    seed: int
    reference_pool: Sequence[str]  # non-members a defense's reference set is (REFERENCE_SET)
    meta: ModelMeta
    label: str
    dataset: dict[str, Any] | None = None  # the adapter spec, when not the source's (an audit's canary view)


Recipe = Callable[[DefenseSetting], ModelRequest]  # the same model under any training defense


class UnitBuilder:
    """Adds keyed units to a plan; a unit another planner already added is shared, not duplicated."""

    def __init__(self, grid: Grid, plan: Plan, sources: dict[str, DataSource]) -> None:
        self.grid, self.plan, self.sources = grid, plan, sources
        self._scored: dict[int, tuple[list[str], list[str]]] = {}

    def scored(self, manifest: Manifest) -> tuple[list[str], list[str]]:
        """`manifest.scored()` once per manifest: it scans every query image, and a manifest has many cells."""
        if id(manifest) not in self._scored:
            self._scored[id(manifest)] = manifest.scored()
        return self._scored[id(manifest)]

    def model(self, recipe: Recipe, defense: DefenseSetting) -> str:
        """The model of `recipe` trained with `defense`, with the inputs the defense needs."""
        request = recipe(defense)
        inputs: dict[str, Any] = {}
        deps: list[str] = []
        for token in sorted(defense.defense.needs):
            fields, needed = TRAINING_INPUTS[token](self, recipe, request)
            inputs.update(fields)
            deps += needed
        config = ModelConfig(
            dataset=request.dataset or request.source.spec, root=request.source.root, arch=request.arch,
            train_ids=sorted(request.train_ids), heldout_ids=sorted(request.heldout_ids), train=dict(self.grid.train),
            defense=defense.to_json(), seed=request.seed, **inputs,
        )
        return self.plan.add(Unit.of("model", config, tuple(deps), request.label, request.meta))

    def role_recipe(self, source: DataSource, manifest: Manifest, role: str, arch: str, seed: int,
                    replicate: int = 0) -> Recipe:
        """The grid's victim or shadow of one manifest: trained on its role's split; `replicate` r > 0: the
        placebo victim's r-th further training draw (its own seed, the same images)."""
        split = getattr(manifest, role)
        placebo = manifest.placebo and role == "victim"
        placebo_label = f", placebo{f' {replicate}' if replicate else ''}" if placebo else ""

        def request(defense: DefenseSetting) -> ModelRequest:
            meta = ModelMeta(
                dataset=source.name, arch=arch, role=role, train_defense=defense.label,
                overlap=manifest.overlap if role == "shadow" and manifest.setting == "dependent" else "n/a",
                seed=seed, n_train=len(split.train), placebo=placebo, setting=manifest.setting,
            )
            label = f"{role} {arch} on {source.name} ({defense.label}{placebo_label})"
            return ModelRequest(source, arch, split.train, split.nonmembers,
                                seed + ROLE_SEED_OFFSET[role] + replicate * PLACEBO_MODEL_SEED,
                                manifest.pool(f"{role}_reference"), meta, label)
        return request

    def role_model(self, source: DataSource, manifest: Manifest, role: str, arch: str, defense: DefenseSetting,
                   seed: int, replicate: int = 0) -> str:
        return self.model(self.role_recipe(source, manifest, role, arch, seed, replicate), defense)

    def release(self, model_key: str, source: DataSource, members: Sequence[str], nonmembers: Sequence[str],
                label: str = "outputs of {model}", dataset: dict[str, Any] | None = None) -> str:
        """A model's released outputs on `members` and `nonmembers` (`label`'s {model}: the model's label)."""
        config = ReleaseConfig(
            model=model_key, dataset=dataset or source.spec, root=source.root, members=sorted(members),
            nonmembers=sorted(nonmembers), image_size=self.grid.train.get("image_size"), release=dict(self.grid.release),
        )
        return self.plan.add(Unit.of("release", config, (model_key,),
                                     label.format(model=self.plan.units[model_key].label)))

    def shadow_fit(self, shadow_release: str, attack: AttackSetting, seen: DefenseSetting, seed: int) -> str:
        """A shadow attack fitted on the shadow's outputs (through the output defense the attacker sees)."""
        config = FitConfig(
            release=shadow_release, attack=attack.to_json(), output_defense=seen.to_json(),
            attack_train=dict(self.grid.attack_train) if attack.attack.uses_attack_train else {},
            calibration_fraction=self.grid.calibration_fraction, seed=seed,
        )
        label = f"{attack.label} fitted on shadow outputs ({seen.label})"
        return self.plan.add(Unit.of("fit", config, (shadow_release,), label))

    def bank_fit(self, attack: AttackSetting, seen: DefenseSetting, releases: Sequence[str], pool: Sequence[str],
                 population: Sequence[str], queries: Sequence[str], seed: int) -> str:
        """A reference attack fitted (and calibrated leave-one-reference-out) on a bank's releases. `queries`: the
        victim's query images an offline bank must never have trained on (the fit unit checks the recorded masks)."""
        config = FitConfig(
            release=None, attack=attack.to_json(), output_defense=seen.to_json(), attack_train={},
            calibration_fraction=self.grid.calibration_fraction, seed=seed, references=list(releases),
            pool=list(pool), population=list(population), queries=sorted(queries),
        )
        label = f"{attack.label} fitted on a bank of {len(releases)} references ({seen.label})"
        return self.plan.add(Unit.of("fit", config, tuple(releases), label))

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
        return self.plan.add(Unit.of("cell", config, deps, label, meta))

    def blind(self, victim: DataSource, members: Sequence[str], nonmembers: Sequence[str], shadow: DataSource,
              shadow_members: Sequence[str], shadow_nonmembers: Sequence[str], seed: int, meta: BlindMeta,
              label: str) -> str:
        """A blind baseline: a classifier of the images alone, fitted on the shadow's split, scored on the victim's."""
        config = BlindConfig(
            dataset=victim.spec, root=victim.root, members=sorted(members), nonmembers=sorted(nonmembers),
            shadow_dataset=shadow.spec, shadow_root=shadow.root, shadow_members=sorted(shadow_members),
            shadow_nonmembers=sorted(shadow_nonmembers), image_size=self.grid.train.get("image_size"), seed=seed,
        )
        return self.plan.add(Unit.of("blind", config, (), label, meta))


def _teacher(builder: UnitBuilder, recipe: Recipe, request: ModelRequest) -> tuple[dict[str, Any], list[str]]:
    """A distilled student learns from the same model trained undefended."""
    key = builder.model(recipe, NO_DEFENSE)
    return {"teacher": key}, [key]


def _reference_set(builder: UnitBuilder, recipe: Recipe, request: ModelRequest) -> tuple[dict[str, Any], list[str]]:
    return {"reference_ids": sorted(request.reference_pool)}, []


# token -> (ModelConfig fields it sets, unit keys the model then reads)
TRAINING_INPUTS: dict[str, Callable[[UnitBuilder, Recipe, ModelRequest], tuple[dict[str, Any], list[str]]]] = {
    TEACHER: _teacher,
    REFERENCE_SET: _reference_set,
}
