"""Membership manifests: which images each model trains on and which it is queried with, by stable id.

Correctness holds by construction, and `Manifest` re-checks it on every construction (also when read
back from disk): members and non-members of a role are disjoint; with shadow overlap f exactly
round(f * n_shadow_members) shadow members are victim members and the rest are images the victim never
saw; a placebo victim trains on images outside both of its query sets; the named pools (the attacker's
population, reference sets for defenses, audit canaries) lie outside every query set; each audit canary is
included in the audit models' training independently with probability 1/2 (pool "canaries_in", a seeded draw
that depends on the seed and the canaries alone). With `group_split`,
all of this holds for whole groups (a city, a video sequence): no group has images on two sides.

Every list is drawn by a seeded shuffle of groups (`_Draw`; without groups every image is its own group):
a set takes whole groups in the shuffled order, and the leftover of the last, partly used group is given
to no other set, so near-duplicate frames never cross a membership line.

Dependent setting (one dataset), in this fixed order, each step a function of the seed and sizes only:
1. victim members, then victim non-members, from the victim pool (all ids, or the train split: the paper);
2. from the rest: shadow non-members, then the shadow's fresh members (the attacker's own population);
3. shadow members = k = round(f * n_sm) victim members (a seeded shuffle of them) + the first n_sm - k fresh;
4. the spare images (outside every query set), in order: the placebo victim's training set (falling back to
   the attacker's images when the spare runs out, as at the paper's sizes), each role's reference set, canaries.
So the victim's lists never depend on the overlap (one victim serves every overlap of a grid), the shadow
non-members are the same for every overlap, the overlap members for f=0.5 are a subset of those for f=1,
and a placebo manifest has the same query sets and shadow as the normal one.

Independent setting (victim and shadow from two datasets): victim members from the victim's train split;
non-members from its val split (the paper: other cities, a distribution shift) or, with
`nonmembers_from: train`, held out of the train split (i.i.d., so the shift can be measured); the shadow's
members and non-members from the shadow dataset; spare images as above.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.errors import SegleakError
from benchmark.io import write_atomic
from benchmark.params import Param

if TYPE_CHECKING:
    from benchmark.data.adapters import DatasetAdapter

VERSION = 2
ROLES = ("victim", "shadow")
LISTS = ("train", "members", "nonmembers")
POOLS = ("attacker", "victim_reference", "shadow_reference", "canaries", "canaries_in")
AUTO_FRACTION = 0.2  # dependent auto recipe: each of the five groups gets a fifth of the images

# The grid's `splits.dependent` / `splits.independent` blocks (sizes: null = the whole split).
SPLIT_PARAMS: dict[str, Param] = {
    "victim_members": Param(int, default=None, nullable=True, low=1),
    "victim_nonmembers": Param(int, default=None, nullable=True, low=1),
    "shadow_members": Param(int, default=None, nullable=True, low=1),
    "shadow_nonmembers": Param(int, default=None, nullable=True, low=1),
    "victim_pool": Param(str, default="all", choices=("all", "train"), help="dependent: where the victim's lists come from"),
    "nonmembers_from": Param(str, default="val", choices=("val", "train"), help="independent: val, or held out of train (i.i.d.)"),
    "reference": Param(int, default=0, low=0, help="non-member images per role for defenses that need them"),
    "canaries": Param(int, default=0, low=0, help="audit canaries outside every query set"),
}


@dataclass(frozen=True)
class ImageIndex:
    """A dataset's image ids by split and the group of each image (its own id when it has none)."""

    dataset: str
    splits: Mapping[str, tuple[str, ...]]
    groups: Mapping[str, str] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return sorted(i for ids in self.splits.values() for i in ids)

    def group(self, image_id: str) -> str:
        return self.groups.get(image_id, image_id)


@dataclass(frozen=True)
class SplitSpec:
    """Sizes and options of one setting's split (None = the whole split; reference/canaries: 0 = none)."""

    victim_members: int | None = None
    victim_nonmembers: int | None = None
    shadow_members: int | None = None
    shadow_nonmembers: int | None = None
    victim_pool: str = "all"
    nonmembers_from: str = "val"
    group_split: bool = True
    reference: int = 0  # images per role for defenses that train on non-members (distillation, adv. reg.)
    canaries: int = 0  # audit canaries


@dataclass(frozen=True)
class RoleSplit:
    """One model's lists: what it trains on and what it is queried with as member / non-member."""

    train: tuple[str, ...]
    members: tuple[str, ...]
    nonmembers: tuple[str, ...]

    @classmethod
    def of(cls, train: Sequence[str], members: Sequence[str], nonmembers: Sequence[str]) -> RoleSplit:
        return cls(tuple(sorted(train)), tuple(sorted(members)), tuple(sorted(nonmembers)))

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in LISTS}

    @property
    def queried(self) -> set[str]:
        return set(self.members) | set(self.nonmembers)


@dataclass(frozen=True)
class Manifest:
    """A membership split for one (dataset, shadow dataset, overlap, seed, placebo) combination."""

    setting: str  # "dependent" | "independent"
    dataset: str
    shadow_dataset: str
    seed: int
    overlap: float
    placebo: bool
    victim: RoleSplit
    shadow: RoleSplit
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)  # id -> group, for ids whose group is not the id
    group_split: bool = False
    version: int = VERSION

    def __post_init__(self) -> None:
        _validate(self)

    def group(self, image_id: str) -> str:
        return self.groups.get(image_id, image_id)

    def pool(self, name: str) -> tuple[str, ...]:
        return tuple(self.pools.get(name, ()))

    def to_dict(self) -> dict:
        return {
            "version": self.version, "setting": self.setting, "dataset": self.dataset,
            "shadow_dataset": self.shadow_dataset, "seed": self.seed, "overlap": self.overlap,
            "placebo": self.placebo, "victim": self.victim.to_dict(), "shadow": self.shadow.to_dict(),
            "pools": {k: sorted(v) for k, v in self.pools.items()}, "groups": dict(self.groups),
            "group_split": self.group_split,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, sorted id lists): the same manifest always gives the same bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1) + "\n"

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def attacker_seen(self) -> set[str]:
        """Groups of every image the attacker trained anything on (its shadow's members and non-members)."""
        return {self.group(i) for i in self.shadow.queried}

    def scored(self) -> tuple[list[str], list[str]]:
        """The victim's query images a cell may score: those whose group the attacker never trained on (with
        overlap f, the shared members and, under a group split, their near-duplicates are left out)."""
        seen = self.attacker_seen()
        return ([i for i in self.victim.members if self.group(i) not in seen],
                [i for i in self.victim.nonmembers if self.group(i) not in seen])

    def summary(self) -> str:
        v, s = self.victim, self.shadow
        shared = len(set(s.members) & set(v.members))
        return (
            f"{self.setting} {self.dataset}"
            + (f" (shadow {self.shadow_dataset})" if self.setting == "independent" else f", overlap {self.overlap:g}")
            + f", seed {self.seed}{', placebo' if self.placebo else ''}: victim trains on {len(v.train)}, "
            f"{len(v.members)} members / {len(v.nonmembers)} non-members; shadow {len(s.members)} members "
            f"({shared} from the victim's) / {len(s.nonmembers)} non-members"
            + "".join(f"; {name} {len(ids)}" for name, ids in sorted(self.pools.items()))
            + (f"; split by {len(set(self.groups.values()))} groups" if self.group_split and self.groups else "")
        )

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        if data.get("version") != VERSION:
            raise SegleakError(f"manifest version {data.get('version')!r} is not {VERSION}: rebuild it")
        roles = {role: RoleSplit.of(*(data[role][name] for name in LISTS)) for role in ROLES}
        return cls(
            setting=data["setting"], dataset=data["dataset"], shadow_dataset=data["shadow_dataset"],
            seed=int(data["seed"]), overlap=float(data["overlap"]), placebo=bool(data["placebo"]),
            pools={k: tuple(v) for k, v in data["pools"].items()}, groups=dict(data["groups"]),
            group_split=bool(data["group_split"]), version=int(data["version"]), **roles,
        )


def _validate(m: Manifest) -> None:
    """The manifest invariants; a violation means a bug or a hand-edited file."""
    if m.setting not in ("dependent", "independent"):
        raise SegleakError(f"manifest setting must be dependent or independent, got {m.setting!r}")
    key = m.group if m.group_split else (lambda i: i)

    def groups(ids) -> set[str]:
        return {key(i) for i in ids}

    for role in ROLES:
        split: RoleSplit = getattr(m, role)
        if groups(split.members) & groups(split.nonmembers):
            raise SegleakError(f"manifest: {role} members and non-members share "
                               + ("groups" if m.group_split else "ids"))
        if not split.members or not split.nonmembers:
            raise SegleakError(f"manifest: {role} has an empty member or non-member list")
    if m.shadow.train != m.shadow.members:
        raise SegleakError("manifest: the shadow must train on exactly its members")
    if m.placebo and groups(m.victim.train) & groups(m.victim.queried):
        raise SegleakError("manifest: a placebo victim's training set must be disjoint from its query sets")
    if not m.placebo and m.victim.train != m.victim.members:
        raise SegleakError("manifest: the victim must train on exactly its members")
    # pools lie outside the query sets of their dataset (both roles' in the dependent setting)
    same = m.setting == "dependent"
    victim_side = m.victim.queried | (m.shadow.queried if same else set())
    shadow_side = m.shadow.queried | (m.victim.queried if same else set())
    outside = {"victim_reference": victim_side, "canaries": victim_side, "canaries_in": victim_side,
               "shadow_reference": shadow_side, "attacker": m.victim.queried if same else set()}
    if not set(m.pool("canaries_in")) <= set(m.pool("canaries")):
        raise SegleakError("manifest: pool 'canaries_in' holds ids that are not canaries")
    for name, ids in m.pools.items():
        if name not in POOLS:
            raise SegleakError(f"manifest: unknown pool {name!r}")
        if groups(ids) & groups(outside[name]):
            raise SegleakError(f"manifest: pool {name!r} overlaps a query set")
    if m.setting == "dependent":
        # stated on the query sets: a normal victim trains on its members; a placebo victim may train on
        # shadow images, which it never queries
        victim_query = m.victim.queried
        from_victim = set(m.shadow.members) & victim_query
        fresh = m.shadow.queried - from_victim
        if from_victim - set(m.victim.members) or groups(fresh) & groups(victim_query):
            raise SegleakError("manifest: shadow ids outside the overlap must be images the victim never saw")
        if len(from_victim) != round(m.overlap * len(m.shadow.members)):
            raise SegleakError(f"manifest: {len(from_victim)} shadow members come from the victim, overlap "
                               f"{m.overlap} needs {round(m.overlap * len(m.shadow.members))}")


class _Draw:
    """A seeded shuffle of whole groups; `take(n)` returns the next n images, dropping the leftover of the
    last, partly used group, so no group is split between two sets (every image is a group when `by_group`
    is False)."""

    def __init__(self, ids: Sequence[str], index: ImageIndex, rng: np.random.Generator, by_group: bool) -> None:
        key = index.group if by_group else (lambda i: i)
        members: dict[str, list[str]] = {}
        for i in sorted(ids):
            members.setdefault(key(i), []).append(i)
        keys = sorted(members)
        self.queue = deque(members[keys[j]] for j in rng.permutation(len(keys)))

    def available(self) -> int:
        return sum(len(g) for g in self.queue)

    def take(self, n: int, what: str) -> list[str]:
        if n > self.available():
            raise SegleakError(f"pools too small: {what} need {n} images, only {self.available()} are left")
        out: list[str] = []
        while len(out) < n:
            out += self.queue.popleft()[: n - len(out)]
        return out

    def rest(self) -> list[str]:
        return [i for group in self.queue for i in group]


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise SegleakError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])


def _outside(ids: Sequence[str], used: Sequence[str], index: ImageIndex, by_group: bool) -> list[str]:
    """`ids` whose group (or id) is not among those of `used`."""
    key = index.group if by_group else (lambda i: i)
    taken = {key(i) for i in used}
    return [i for i in ids if key(i) not in taken]


def _size(value: int | None, available: int, what: str) -> int:
    n = available if value is None else value
    if n < 1:
        raise SegleakError(f"{what} must be >= 1, got {n}")
    return n


def canary_inclusion(canaries: Sequence[str], seed: int) -> list[str]:
    """The canaries an audit model trains on: each independently with probability 1/2 (Steinke et al.'s
    one-run audit needs independent draws, not an exact half), seeded, in id order."""
    ids = sorted(canaries)
    keep = _rng(seed, 8).random(len(ids)) < 0.5
    return [i for i, k in zip(ids, keep) if k]


def _spare_pools(spec: SplitSpec, spare: _Draw, n_placebo: int, fallback: Sequence[str], placebo: bool,
                 roles: Sequence[str], seed: int,
                 shadow_spare: _Draw | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """The placebo victim's training set and the named pools, drawn from the spare images in a fixed order, so
    asking for canaries never changes the placebo set and asking for a placebo never changes a pool."""
    reserved = spare.take(min(n_placebo, spare.available()), "the placebo victim")
    placebo_train = (reserved + [i for i in fallback if i not in set(reserved)])[:n_placebo] if placebo else []
    if placebo and len(placebo_train) < 1:
        raise SegleakError("pools too small: no image is left outside the query sets for the placebo victim")
    pools: dict[str, list[str]] = {}
    if spec.reference:
        for role in roles:
            source = shadow_spare if role == "shadow" and shadow_spare is not None else spare
            pools[f"{role}_reference"] = source.take(spec.reference, f"the {role}'s reference set")
    if spec.canaries:
        pools["canaries"] = spare.take(spec.canaries, "the audit canaries")
        pools["canaries_in"] = canary_inclusion(pools["canaries"], seed)
    return placebo_train, pools


def _groups_of(index: ImageIndex, ids: Sequence[str]) -> dict[str, str]:
    return {i: index.group(i) for i in ids if index.group(i) != i}


def dependent_manifest(index: ImageIndex, spec: SplitSpec, *, overlap: float, seed: int,
                       placebo: bool = False) -> Manifest:
    """Victim and shadow drawn from one dataset, the shadow overlapping the victim by `overlap` (see above)."""
    if not 0.0 <= overlap <= 1.0:
        raise SegleakError(f"overlap must be in [0, 1], got {overlap}")
    by_group = spec.group_split
    ids = index.ids
    pool = list(index.splits.get("train", ())) if spec.victim_pool == "train" else ids
    sizes = {name: getattr(spec, name) for name in ("victim_members", "victim_nonmembers", "shadow_members",
                                                     "shadow_nonmembers")}
    for name, value in sizes.items():
        if value is None:
            raise SegleakError(f"the dependent setting needs an explicit size for {name}")
        _size(value, 0, name)
    victim = _Draw(pool, index, _rng(seed, 0), by_group)
    members = victim.take(spec.victim_members, f"{spec.victim_members} victim members and the victim non-members")
    nonmembers = victim.take(spec.victim_nonmembers, f"{spec.victim_nonmembers} victim non-members")
    rest = _Draw(_outside(ids, members + nonmembers, index, by_group), index, _rng(seed, 1), by_group)
    shadow_nonmembers = rest.take(spec.shadow_nonmembers, "the shadow's non-members (images the victim never saw)")
    fresh = rest.take(spec.shadow_members, "the shadow's members (images the victim never saw)")
    k = round(overlap * spec.shadow_members)
    shared = _Draw(members, index, _rng(seed, 2), False).take(k, "the overlap")
    shadow_members = shared + fresh[: spec.shadow_members - k]
    victim_train, pools = _spare_pools(spec, rest, spec.victim_members, fresh + shadow_nonmembers, placebo,
                                       ("victim", "shadow"), seed)
    used = members + nonmembers + shadow_members + shadow_nonmembers + victim_train
    return Manifest(
        setting="dependent", dataset=index.dataset, shadow_dataset=index.dataset, seed=seed, overlap=float(overlap),
        placebo=placebo, victim=RoleSplit.of(victim_train if placebo else members, members, nonmembers),
        shadow=RoleSplit.of(shadow_members, shadow_members, shadow_nonmembers),
        pools={"attacker": tuple(sorted(fresh + shadow_nonmembers)), **{k: tuple(v) for k, v in pools.items()}},
        groups=_groups_of(index, used + [i for v in pools.values() for i in v]) if by_group else {},
        group_split=by_group,
    )


def independent_manifest(victim: ImageIndex, shadow: ImageIndex, spec: SplitSpec, *, seed: int,
                         placebo: bool = False) -> Manifest:
    """Victim lists from the victim dataset (train vs val, or i.i.d. within train), shadow from another."""
    by_group = spec.group_split
    train, val = list(victim.splits.get("train", ())), list(victim.splits.get("val", ()))
    draw = _Draw(train, victim, _rng(seed, 4), by_group)
    if spec.nonmembers_from == "val":
        members = draw.take(_size(spec.victim_members, draw.available(), "victim_members"),
                            f"{spec.victim_members} victim members from the train split")
        val_draw = _Draw(val, victim, _rng(seed, 5), by_group)
        nonmembers = val_draw.take(_size(spec.victim_nonmembers, val_draw.available(), "victim_nonmembers"),
                                   f"{spec.victim_nonmembers} victim non-members from the val split")
    else:
        n_non = _size(spec.victim_nonmembers, 0, "victim_nonmembers (held out of train)")
        nonmembers = draw.take(n_non, f"{n_non} victim non-members held out of the train split")
        members = draw.take(_size(spec.victim_members, draw.available(), "victim_members"),
                            f"{spec.victim_members} victim members from the rest of the train split")
    shadow_draw = _Draw(shadow.ids, shadow, _rng(seed, 3), by_group)
    n_sm = _size(spec.shadow_members, shadow_draw.available() // 2, "shadow_members")
    n_sn = _size(spec.shadow_nonmembers, shadow_draw.available() // 2, "shadow_nonmembers")
    shadow_nonmembers = shadow_draw.take(n_sn, f"{n_sm} shadow members + {n_sn} non-members from {shadow.dataset}")
    shadow_members = shadow_draw.take(n_sm, f"{n_sm} shadow members + {n_sn} non-members from {shadow.dataset}")
    spare = _Draw(_outside(victim.ids, members + nonmembers, victim, by_group), victim, _rng(seed, 6), by_group)
    victim_train, pools = _spare_pools(spec, spare, len(members), (), placebo, ("victim", "shadow"), seed,
                                       shadow_draw)
    used = members + nonmembers + victim_train + [i for k, v in pools.items() if k != "shadow_reference" for i in v]
    groups = {**_groups_of(victim, used),
              **_groups_of(shadow, shadow_members + shadow_nonmembers + pools.get("shadow_reference", []))}
    return Manifest(
        setting="independent", dataset=victim.dataset, shadow_dataset=shadow.dataset, seed=seed, overlap=0.0,
        placebo=placebo, victim=RoleSplit.of(victim_train if placebo else members, members, nonmembers),
        shadow=RoleSplit.of(shadow_members, shadow_members, shadow_nonmembers),
        pools={"attacker": tuple(sorted(shadow_members + shadow_nonmembers)), **{k: tuple(v) for k, v in pools.items()}},
        groups=groups if by_group else {}, group_split=by_group,
    )


def image_index(name: str, adapter: DatasetAdapter, root: Path) -> ImageIndex:
    """Every image id of the dataset at `root` by split, with its group (from the adapter)."""
    splits = {split: tuple(s.id for s in adapter.list_samples(root, split)) for split in adapter.splits}
    groups = {i: adapter.group_of(i) for ids in splits.values() for i in ids}
    return ImageIndex(name, splits, {i: g for i, g in groups.items() if g != i})


def recipe_spec(recipe: str, victim: DatasetAdapter, shadow: DatasetAdapter | None, n_images: int,
                group_split: bool = True) -> SplitSpec:
    """The sizes `segleak splits --recipe` uses.

    "paper": the paper's sizes. Dependent (Cityscapes): victim 1488 members / 912 non-members from train,
    shadow 555 / 520 from the rest of train plus val. Independent: the victim's members are all of the
    dataset's train split, non-members all of val; shadow BDD100K 4000 / 4000, Mapillary 10000 / 10000.
    "auto": dependent gives each of victim members, victim non-members, shadow members, shadow non-members
    and the placebo victim's training set a fifth of the images; independent is as in "paper" with the
    shadow dataset split in halves.
    """
    if recipe not in ("auto", "paper"):
        raise SegleakError(f"unknown recipe {recipe!r}; known: auto, paper")
    if shadow is None:
        if recipe == "paper":
            if victim.paper_dependent is None:
                raise SegleakError(f"the paper recipe has dependent splits for cityscapes only, not {victim.name}")
            vm, vn, sm, sn = victim.paper_dependent
            return SplitSpec(vm, vn, sm, sn, victim_pool="train", group_split=group_split)
        n = int(n_images * AUTO_FRACTION)
        if n < 1:
            raise SegleakError(f"pools too small: the auto recipe needs at least 5 images, the dataset has {n_images}")
        return SplitSpec(n, n, n, n, group_split=group_split)
    if recipe == "paper":
        if shadow.paper_shadow is None:
            raise SegleakError(f"the paper recipe has no independent shadow split for {shadow.name}")
        return SplitSpec(None, None, *shadow.paper_shadow, group_split=group_split)
    return SplitSpec(group_split=group_split)


def make_manifest(dataset: str | dict, root: Path, overlap: float, seed: int, recipe: str = "auto",
                  shadow_dataset: str | dict | None = None, shadow_root: Path | None = None,
                  placebo: bool = False, group_split: bool = True) -> Manifest:
    """The manifest `segleak splits` writes, from the images found under `root` (and `shadow_root`), through
    the same functions the benchmark's runner calls. An independent placebo victim trains on a seeded half of
    train (the other half are the members)."""
    from benchmark.data.adapters import get_adapter

    adapter = get_adapter(dataset)
    index = image_index(adapter.name, adapter, Path(root))
    if shadow_dataset is None and shadow_root is None:
        spec = recipe_spec(recipe, adapter, None, len(index.ids), group_split)
        return dependent_manifest(index, spec, overlap=overlap, seed=seed, placebo=placebo)
    if shadow_dataset is None or shadow_root is None:
        raise SegleakError("the independent setting needs both --shadow-dataset and --shadow-root")
    shadow_adapter = get_adapter(shadow_dataset)
    if shadow_adapter.spec == adapter.spec:
        raise SegleakError(f"shadow dataset {shadow_adapter.name} is the victim's: omit it for the dependent setting")
    if overlap != 0.0:
        raise SegleakError(f"overlap {overlap} applies only to the dependent setting (no shadow dataset)")
    spec = recipe_spec(recipe, adapter, shadow_adapter, len(index.ids), group_split)
    if placebo:  # every train image is a member in these recipes: half of them train the placebo instead
        spec = SplitSpec(**{**spec.__dict__, "victim_members": len(index.splits.get("train", ())) // 2})
    return independent_manifest(index, image_index(shadow_adapter.name, shadow_adapter, Path(shadow_root)), spec,
                                seed=seed, placebo=placebo)


def write_manifest(manifest: Manifest, path: Path) -> str:
    """Write the JSON and `<path>.sha256` (sha256sum format) atomically; returns the digest."""
    path = Path(path)
    digest = manifest.digest()
    write_atomic(path, manifest.to_json())
    write_atomic(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    return digest


def read_manifest(path: Path) -> Manifest:
    """Read a manifest, verifying its digest when the `.sha256` file is there and its invariants always."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SegleakError(f"cannot read manifest {path}: {exc.strerror}") from None
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        expected = (sidecar.read_text().split() or [""])[0]
        if hashlib.sha256(data).hexdigest() != expected:
            raise SegleakError(f"manifest {path} does not match its digest in {sidecar}: the file was changed")
    try:
        return Manifest.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise SegleakError(f"manifest {path} is malformed: {exc}") from None
    except SegleakError as exc:
        raise SegleakError(f"manifest {path} is invalid: {exc}") from None
