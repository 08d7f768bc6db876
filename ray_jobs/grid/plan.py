"""The plan: a grid expanded into the unique work units it needs, each keyed by a hash of its inputs.

Units form a DAG: `model` (train one segmentation model) -> `release` (its outputs on a query set) -> `fit`
(an attack fitted on the attacker's data) -> `cell` (that attack scored on a victim's released outputs = one
leaderboard entry); `blind` (a setting's blind baseline) reads the data alone. A unit's key hashes its typed
config, which holds the keys of the units it reads, so two grid cells that need the same model get the same
key and the model is trained once. Display and logging metadata (`meta`) is kept out of the key. Units are made
by the one builder (ray_jobs.grid.builder); this module decides which, per (seed, setting, manifest) slice, and
hands reference attacks to the bank planner and the `audit` block to the audit planner.
"""

from __future__ import annotations

import json

from benchmark.data.splits import Manifest
from benchmark.needs import POPULATION, REFERENCES, SHADOW
from ray_jobs.grid.audit import add_audits
from ray_jobs.grid.bank import BankPlanner
from ray_jobs.grid.builder import UnitBuilder
from ray_jobs.grid.entries import NO_DEFENSE, DefenseSetting
from ray_jobs.grid.sources import DataSource
from ray_jobs.grid.spec import Grid, Setting
from ray_jobs.units.base import Plan
from ray_jobs.units.kinds.blind import BlindMeta
from ray_jobs.units.kinds.cell import CellMeta


class _SlicePlanner:
    """Adds the units of one (seed, setting, manifest) slice of the grid to a plan."""

    def __init__(self, builder: UnitBuilder) -> None:
        self.builder, self.grid, self.plan, self.sources = builder, builder.grid, builder.plan, builder.sources
        self.banks = BankPlanner(builder)

    def blind(self, setting: Setting, manifest: Manifest, seed: int) -> str:
        victim, shadow = self.sources[setting.dataset], self.sources[setting.shadow_dataset]
        members, nonmembers = self.builder.scored(manifest)
        meta = BlindMeta(dataset=setting.dataset, shadow_dataset=setting.shadow_dataset, setting=setting.kind,
                         seed=seed, overlap=manifest.overlap if setting.kind == "dependent" else "n/a")
        label = f"blind baseline, {setting.kind} {setting.dataset} <- {setting.shadow_dataset}"
        return self.builder.blind(victim, members, nonmembers, shadow, manifest.shadow.members,
                                  manifest.shadow.nonmembers, seed, meta, label)

    def placebo_models(self, control: str, defense: DefenseSetting) -> int:
        """Victims per (slice, defense setting): `placebo_models` placebo victims (training draws) where the
        recipe has no training-side defense (output defenses reuse them), one elsewhere (each costs a training)."""
        untrained = defense.output_side or defense.name == NO_DEFENSE.name
        return self.grid.placebo_models if control == "placebo" and untrained else 1

    def slice(self, setting: Setting, manifest: Manifest, seed: int, control: str) -> None:
        grid, builder, banks = self.grid, self.builder, self.banks
        victim_src, shadow_src = self.sources[setting.dataset], self.sources[setting.shadow_dataset]
        where = {"overlap": manifest.overlap, "setting": setting.kind, "control": control}
        for victim_arch in grid.victim_archs:
            for shadow_arch in grid.shadow_archs_for(victim_arch):
                for defense, replicate in ((d, r) for d in grid.defenses if d.only.allows(victim_arch, **where)
                                           for r in range(self.placebo_models(control, d))):
                    trained_with = NO_DEFENSE if defense.output_side else defense
                    victim_model = builder.role_model(victim_src, manifest, "victim", victim_arch, trained_with, seed,
                                                      replicate)
                    victim_release = builder.release(victim_model, victim_src, manifest.victim.members,
                                                     manifest.victim.nonmembers)
                    attacks = [a for a in grid.attacks
                               if a.only.allows(victim_arch, **where, defense=defense.name, defense_label=defense.label)]
                    # the adaptive attacker trains its shadow (and its reference models) with the victim's
                    # training defense and passes their outputs through the victim's output defense
                    attacker_trains = trained_with if grid.adaptive else NO_DEFENSE
                    shadow_release = None
                    if any(SHADOW in a.attack.requirements() for a in attacks):
                        shadow_model = builder.role_model(shadow_src, manifest, "shadow", shadow_arch, attacker_trains, seed)
                        shadow_release = builder.release(shadow_model, shadow_src, manifest.shadow.members,
                                                         manifest.shadow.nonmembers)
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
                        if REFERENCES not in attack.attack.requirements():
                            fit_key = builder.shadow_fit(shadow_release, attack, seen, seed)
                            builder.cell(fit_key, victim_release, victim_model, defense, manifest, victim_src, meta)
                            continue
                        fit_key = banks.victim_fit(attack, seen, attacker_trains, victim_src, manifest, victim_arch, seed)
                        population = (banks.population_release(victim_model, victim_src, manifest)
                                      if POPULATION in attack.attack.requirements() else None)
                        builder.cell(fit_key, victim_release, victim_model, defense, manifest, victim_src, meta, population)
                        protocol = grid.lira_protocol
                        if control == "none" and protocol and protocol.allows(
                                victim_arch, **where, defense=defense.name, defense_label=defense.label):
                            banks.protocol(attack, seen, attacker_trains, victim_src, manifest, meta)


def build_plan(grid: Grid, sources: dict[str, DataSource], manifests: dict[tuple, Manifest]) -> Plan:
    """Expand the grid. `manifests` maps (seed, setting, overlap, placebo) to its membership manifest."""
    plan = Plan()
    builder = UnitBuilder(grid, plan, sources)
    slices = _SlicePlanner(builder)
    for (seed, setting, _overlap, placebo), manifest in sorted(manifests.items(), key=lambda kv: str(kv[0])):
        slices.slice(setting, manifest, seed, control="placebo" if placebo else "none")
    if grid.blind:
        first: dict[tuple, Manifest] = {}
        for (seed, setting, overlap, placebo), manifest in sorted(manifests.items(), key=lambda kv: str(kv[0])):
            if not placebo and ((seed, setting) not in first or overlap < first[(seed, setting)].overlap):
                first[(seed, setting)] = manifest
        for (seed, setting), manifest in first.items():
            slices.blind(setting, manifest, seed)
    if grid.audit is not None:
        add_audits(builder, manifests)
    return plan
