"""The attacker's reference-model bank as plan units, and the fits, cells and LiRA-protocol units that read it.

A reference is a normal `model` unit (role "reference", bank "offline" or "online", index i) trained on a
seeded random subset of a pool, then a `release` of it on every image the attacks read (the attacker's pool
and the victim's query images). Its subset depends only on (pool, size, seed, bank, i), so a unit's key does
not depend on how many references the grid asks for: a bank of 16 reuses the 8 of a bank of 8.

- offline pool = the attacker's own population (`manifest.pool("attacker")`: in the dependent setting the
  shadow's fresh images and non-members), never a victim query image (checked here on every reference, and
  again in the fit unit from what each model's data loader recorded);
- online pool = the victim's query images (the attacker knows them and their ground truth in this threat
  model; online LiRA trains on halves of the query set, as the paper does) plus attacker images, whole groups,
  up to twice the victim's training size.
Each reference trains on as many images as the victim (a reference trained on fewer images overfits more than the
victim, so calibration hands the victim's leak back as noise), and each pool is twice that, so every image is IN
with probability 1/2. Where a pool cannot be (the attacker's population below twice the victim's training set,
or more query images than that), the plan says so in a note and draws what it can: offline references on half
the pool, an online bank whose IN rate is below 1/2. Adaptive, like the shadows: the references train with the
victim's training-side defense, and their outputs pass through its output defense in the fit unit.

The LiRA evaluation protocol (`lira_protocol: true` in a grid): the online bank's K models, each in turn the
target and the others its references, scores pooled over targets (the fit's leave-one-reference-out
calibration, cross-fitted when tuned); a placebo (placebo models on fresh subsets of the pool, in no bank, each
scored as a target under a reference's recorded mask through the same leave-one-out code) and a blind
baseline (reference 0's split of one half of the pool, predicted from the images alone by a classifier
fitted on reference 1's split of the other half) run next to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from benchmark.attacks.reference import OFFLINE, ONLINE
from benchmark.data.splits import Manifest
from benchmark.errors import SegleakError
from benchmark.needs import ONLINE_REFERENCES
from ray_jobs.grid.builder import ModelRequest, Recipe, UnitBuilder
from ray_jobs.grid.entries import AttackSetting, DefenseSetting
from ray_jobs.grid.sources import DataSource
from ray_jobs.units.base import Unit
from ray_jobs.units.kinds.blind import BlindMeta
from ray_jobs.units.kinds.cell import CellMeta
from ray_jobs.units.kinds.model import ModelMeta
from ray_jobs.units.kinds.protocol import PROTOCOL_SETTING, ProtocolConfig

SEED_OFFSET = {OFFLINE: 20_000, ONLINE: 30_000}  # reference i of a bank trains with seed + offset + i
BLIND_INDEX = 10**6  # the stream that halves the online pool for the protocol's blind baseline (no reference)
FILL_INDEX = 10**6 + 1  # the stream that fills the online pool with attacker images
PLACEBO_INDEX = 10**5  # the protocol's placebo model p trains on subset stream PLACEBO_INDEX + p (no reference's)


def subset_size(pool_size: int, victim_train: int) -> int:
    """Images per reference: the victim's training-set size, at most half the pool."""
    n = min(victim_train, pool_size // 2)
    if n < 1:
        raise SegleakError(f"pools too small: a reference bank needs a pool of at least 2 images, got {pool_size}")
    return n


def online_pool(queries: Sequence[str], attacker: Sequence[str], victim_train: int, seed: int,
                group_of: Callable[[str], str]) -> list[str]:
    """Every victim query image plus attacker images (whole groups, seeded) up to twice the victim's training
    size: references of the victim's size then hold each image IN with probability 1/2."""
    need = 2 * victim_train - len(queries)
    fill = reference_subset(attacker, need, seed, ONLINE, FILL_INDEX, group_of) if need > 0 and attacker else []
    return sorted(set(queries) | set(fill))


def reference_subset(pool: Sequence[str], n: int, seed: int, bank: str, index: int,
                     group_of: Callable[[str], str]) -> list[str]:
    """Reference `index`'s training images: whole groups (near-duplicate frames never straddle IN and OUT),
    every group IN with probability exactly p = n / len(pool), whatever its size, and about n images in all.

    A greedy "take groups while they fit" draw put single frames IN 58-66% of the time and frames of long
    drives 47-48%: LiRA's IN/OUT fits then see a group's size, not its membership. Here the groups are ordered
    by size, shuffled within windows of ceil(2/p) size-neighbours, and sampled systematically (a random start,
    a step of 1/p groups): each window gives p of its groups, so the total stays within about one group's size
    of n (an independent coin per group would make it vary by sqrt(p(1-p) sum of squared sizes)), at the
    price of negative dependence between size-neighbours (two of a window of four at p = 1/2), which LiRA's
    per-image IN and OUT fits do not use. A function of (pool, n, seed, bank, index) only."""
    groups: dict[str, list[str]] = {}
    for image_id in sorted(pool):
        groups.setdefault(group_of(image_id), []).append(image_id)
    keys = sorted(groups)
    rng = np.random.default_rng([seed, index, SEED_OFFSET[bank], 41])
    p = min(1.0, n / len(pool))
    by_size = np.lexsort((rng.random(len(keys)), [len(groups[k]) for k in keys]))
    order = by_size[np.lexsort((rng.random(len(keys)), np.arange(len(keys)) // int(np.ceil(2 / p))))]
    edges = p * np.arange(len(keys) + 1) - rng.random()  # group i holds the points u + j in [p i, p (i+1))
    taken = order[np.ceil(edges[1:]) > np.ceil(edges[:-1])]
    return sorted(image for j in taken for image in groups[keys[j]])


@dataclass(frozen=True)
class BankUnits:
    """A planned bank: its references' release keys (index order), their training subsets, its pool and the
    attacker's population."""

    releases: tuple[str, ...]
    subsets: tuple[tuple[str, ...], ...]
    pool: tuple[str, ...]
    population: tuple[str, ...]
    released: tuple[str, ...] = ()  # the images every reference is released on

    @property
    def train_size(self) -> int:
        return round(sum(map(len, self.subsets)) / len(self.subsets))

    @property
    def in_rate(self) -> float:
        """The mean fraction of references an image of the pool trains in (1/2 by design)."""
        return sum(map(len, self.subsets)) / (len(self.subsets) * len(self.pool))


class BankPlanner:
    """Adds reference banks and the units that read them to a plan (through the plan's builder)."""

    def __init__(self, builder: UnitBuilder) -> None:
        self.builder, self.grid, self.plan = builder, builder.grid, builder.plan

    def _recipe(self, source: DataSource, manifest: Manifest, arch: str, seed: int, bank: str, index: int,
                train: list[str], pool: Sequence[str], placebo: bool = False) -> Recipe:
        def request(defense: DefenseSetting) -> ModelRequest:
            meta = ModelMeta(dataset=source.name, arch=arch, role="reference", train_defense=defense.label,
                             overlap="n/a", seed=seed, n_train=len(train), placebo=placebo, setting=manifest.setting,
                             index=index, bank=bank)
            role = f"protocol placebo {index - PLACEBO_INDEX}" if placebo else f"reference {index}"
            label = f"{role} ({bank} bank) {arch} on {source.name} ({defense.label})"
            return ModelRequest(source, arch, train, sorted(set(pool) - set(train)), seed + SEED_OFFSET[bank] + index,
                                manifest.pool("shadow_reference"), meta, label)
        return request

    def _release(self, model_key: str, source: DataSource, members: Sequence[str], ids: Sequence[str]) -> str:
        members = set(members) & set(ids)
        return self.builder.release(model_key, source, members, set(ids) - members,
                                    label=f"outputs of {{model}} on {len(ids)} images")

    def bank(self, source: DataSource, manifest: Manifest, arch: str, defense: DefenseSetting, seed: int,
             bank: str) -> BankUnits:
        """The offline or online bank of (setting, arch, training defense, seed): its models and releases."""
        attacker = sorted(manifest.pool("attacker"))
        queries = sorted(manifest.victim.queried)
        victim_train = len(manifest.victim.train)
        pool = attacker if bank == OFFLINE else online_pool(queries, attacker, victim_train, seed, manifest.group)
        refs = self.grid.references
        count = refs["by_defense"].get(defense.label) or refs["by_defense"].get(defense.name) or (
            refs["count"] if bank == OFFLINE else refs.get("online_count") or refs["count"])
        n = subset_size(len(pool), victim_train)
        self._note_mismatch(bank, len(pool), n, victim_train, len(queries), manifest.setting)
        released = sorted(set(attacker) | set(queries))
        releases, subsets = [], []
        for index in range(count):
            train = reference_subset(pool, n, seed, bank, index, manifest.group)
            if bank == OFFLINE and set(train) & set(queries):
                raise SegleakError(f"plan: offline reference {index} would train on victim query image "
                                   f"{sorted(set(train) & set(queries))[0]!r}")
            model = self.builder.model(self._recipe(source, manifest, arch, seed, bank, index, train, pool), defense)
            releases.append(self._release(model, source, train, released))
            subsets.append(tuple(train))
        return BankUnits(tuple(releases), tuple(subsets), tuple(pool), tuple(attacker), tuple(released))

    def placebos(self, source: DataSource, manifest: Manifest, arch: str, defense: DefenseSetting, seed: int,
                 units: BankUnits) -> tuple[str, ...]:
        """The LiRA protocol placebo's models: trained like the online references (same pool, size, recipe)
        on subsets of their own streams (PLACEBO_INDEX + p), in no bank, released on the same images."""
        n = subset_size(len(units.pool), len(manifest.victim.train))
        releases = []
        for p in range(self.grid.references["placebo_count"]):
            train = reference_subset(units.pool, n, seed, ONLINE, PLACEBO_INDEX + p, manifest.group)
            recipe = self._recipe(source, manifest, arch, seed, ONLINE, PLACEBO_INDEX + p, train, units.pool,
                                  placebo=True)
            model = self.builder.model(recipe, defense)
            releases.append(self._release(model, source, train, units.released))
        return tuple(releases)

    def _note_mismatch(self, bank: str, pool: int, n: int, victim_train: int, queries: int, setting: str) -> None:
        if n < victim_train:
            self.plan.note(f"{bank} references train on {n} images, the victim on {victim_train}: their pool ({pool} "
                           f"images) is below twice the victim's training set; grow splits.{setting}.shadow_nonmembers")
        if bank == ONLINE and 2 * n + 1 < pool:
            self.plan.note(f"the {bank} bank's IN rate is {n / pool:.2f}, not 1/2: the victim's {queries} query images "
                           f"exceed twice its {victim_train} training images; lower splits.{setting}.victim_nonmembers")

    def fit(self, attack: AttackSetting, seen: DefenseSetting, units: BankUnits, queries: Sequence[str],
            seed: int) -> str:
        return self.builder.bank_fit(attack, seen, units.releases, units.pool, units.population, queries, seed)

    def population_release(self, victim_model: str, source: DataSource, manifest: Manifest) -> str:
        """The victim's outputs on the attacker's population (RMIA's z)."""
        return self._release(victim_model, source, manifest.victim.train, manifest.pool("attacker"))

    def victim_fit(self, attack: AttackSetting, seen: DefenseSetting, trained_with: DefenseSetting,
                   source: DataSource, manifest: Manifest, arch: str, seed: int) -> str:
        """The fit a victim cell of a reference attack reads: on the online bank for online variants, else on
        the offline one (with the victim's query images to check it against)."""
        online = ONLINE_REFERENCES in attack.attack.requirements()
        units = self.bank(source, manifest, arch, trained_with, seed, ONLINE if online else OFFLINE)
        return self.fit(attack, seen, units, () if online else manifest.victim.queried, seed)

    def protocol(self, attack: AttackSetting, seen: DefenseSetting, trained_with: DefenseSetting,
                 source: DataSource, manifest: Manifest, meta: CellMeta) -> None:
        """The LiRA protocol cells of an attack (and its placebo) on the online bank, and the protocol's blind
        baseline: a check of the reference-subset draw (can images alone predict a reference's IN/OUT split?
        only if the draw depends on them, as a greedy one did on group size), not of image unpredictability,
        which seeded splits of one pool have by construction."""
        units = self.bank(source, manifest, meta.victim_arch, trained_with, meta.seed, ONLINE)
        fit_key = self.fit(attack, seen, units, (), meta.seed)
        placebos = self.placebos(source, manifest, meta.victim_arch, trained_with, meta.seed, units)
        for control in ("none", "placebo"):
            chosen = list(placebos) if control == "placebo" else []
            config = ProtocolConfig(fit=fit_key, dataset=source.spec, placebo=bool(chosen), seed=meta.seed,
                                    placebos=chosen)
            cell_meta = replace(meta, setting=PROTOCOL_SETTING, shadow_overlap="n/a", control=control)
            label = (f"{meta.attack_label} LiRA protocol on {len(units.releases)} {meta.victim_arch} references "
                     f"[{meta.defense_label}{f', {len(chosen)} placebo models' if chosen else ''}]")
            self.plan.add(Unit.of("protocol", config, (fit_key, *chosen), label, cell_meta))
        # the blind classifier learns reference 1's split on one half of the pool (whole groups) and scores
        # reference 0's split on the other half: never its own training images, so its interval is honest
        half = set(reference_subset(units.pool, len(units.pool) // 2, meta.seed, ONLINE, BLIND_INDEX, manifest.group))
        scored, fitted = sorted(set(units.pool) - half), sorted(half)
        first, second = (set(s) for s in units.subsets[:2])
        blind_meta = BlindMeta(dataset=source.name, shadow_dataset=source.name, setting=PROTOCOL_SETTING,
                               seed=meta.seed, overlap="n/a")
        self.builder.blind(source, [i for i in scored if i in first], [i for i in scored if i not in first], source,
                           [i for i in fitted if i in second], [i for i in fitted if i not in second], meta.seed,
                           blind_meta, f"blind baseline, LiRA protocol (reference 0's split of the online pool, "
                           f"{source.name})")
