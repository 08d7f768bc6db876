"""Membership manifests: which images each model trains on and which it is queried with, by stable id.

Correctness holds by construction, and `Manifest` re-checks it on every construction (also when read
back from disk): members and non-members of a role are disjoint; with shadow overlap f exactly
round(f * n_shadow_members) shadow members are victim members and the rest are images the victim never
saw; a placebo victim trains on images outside both of its query sets.

Dependent setting, how the ids are drawn (every step a fixed function of the seed and the sizes only):
1. shuffle the victim pool; victim members = the first n_vm, victim non-members = the next n_vn;
2. shuffle every other id; the first n_sm + n_sn are the shadow's fresh pool, the next n_vm the placebo
   victim's training set;
3. shadow members = the first k of a seeded shuffle of victim members (k = round(f * n_sm)) plus the
   first n_sm - k of the fresh pool; shadow non-members = the last n_sn of the fresh pool.
So the victim's lists never depend on the overlap (one victim serves every overlap of a grid), the shadow
non-members are the same for every overlap, the overlap members for f=0.5 are a subset of those for f=1,
and a placebo manifest has the same query sets and shadow as the normal one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.errors import SegleakError

VERSION = 1
ROLES = ("victim", "shadow")
LISTS = ("train", "members", "nonmembers")

# The paper's split sizes (PAPER_NOTES.md).
PAPER_DEPENDENT = {"cityscapes": (1488, 912, 555, 520)}  # victim members/non-members, shadow members/non-members
PAPER_SHADOW = {"bdd100k": (4000, 4000), "mapillary": (10000, 10000)}
AUTO_FRACTION = 0.2  # dependent auto recipe: each of the five groups gets a fifth of the images


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
    version: int = VERSION

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        return {
            "version": self.version, "setting": self.setting, "dataset": self.dataset,
            "shadow_dataset": self.shadow_dataset, "seed": self.seed, "overlap": self.overlap,
            "placebo": self.placebo, "victim": self.victim.to_dict(), "shadow": self.shadow.to_dict(),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, sorted id lists): the same manifest always gives the same bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1) + "\n"

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def summary(self) -> str:
        v, s = self.victim, self.shadow
        shared = len(set(s.members) & set(v.members))
        return (
            f"{self.setting} {self.dataset}"
            + (f" (shadow {self.shadow_dataset})" if self.setting == "independent" else f", overlap {self.overlap:g}")
            + f", seed {self.seed}{', placebo' if self.placebo else ''}: victim trains on {len(v.train)}, "
            f"{len(v.members)} members / {len(v.nonmembers)} non-members; shadow {len(s.members)} members "
            f"({shared} from the victim's) / {len(s.nonmembers)} non-members"
        )

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        roles = {role: RoleSplit.of(*(data[role][name] for name in LISTS)) for role in ROLES}
        return cls(
            setting=data["setting"], dataset=data["dataset"], shadow_dataset=data["shadow_dataset"],
            seed=int(data["seed"]), overlap=float(data["overlap"]), placebo=bool(data["placebo"]),
            version=int(data["version"]), **roles,
        )


def _validate(m: Manifest) -> None:
    """The manifest invariants; a violation means a bug or a hand-edited file."""
    if m.setting not in ("dependent", "independent"):
        raise SegleakError(f"manifest setting must be dependent or independent, got {m.setting!r}")
    for role in ROLES:
        split: RoleSplit = getattr(m, role)
        if set(split.members) & set(split.nonmembers):
            raise SegleakError(f"manifest: {role} members and non-members share ids")
        if not split.members or not split.nonmembers:
            raise SegleakError(f"manifest: {role} has an empty member or non-member list")
    if m.shadow.train != m.shadow.members:
        raise SegleakError("manifest: the shadow must train on exactly its members")
    victim_query = set(m.victim.members) | set(m.victim.nonmembers)
    if m.placebo and set(m.victim.train) & victim_query:
        raise SegleakError("manifest: a placebo victim's training set must be disjoint from its query sets")
    if not m.placebo and m.victim.train != m.victim.members:
        raise SegleakError("manifest: the victim must train on exactly its members")
    if m.setting == "dependent":
        # stated on the query sets: a normal victim trains on its members; a placebo victim may train on
        # shadow images, which it never queries
        from_victim = set(m.shadow.members) & victim_query
        if from_victim - set(m.victim.members) or set(m.shadow.nonmembers) & victim_query:
            raise SegleakError("manifest: shadow ids outside the overlap must be images the victim never saw")
        if len(from_victim) != round(m.overlap * len(m.shadow.members)):
            raise SegleakError(f"manifest: {len(from_victim)} shadow members come from the victim, overlap "
                               f"{m.overlap} needs {round(m.overlap * len(m.shadow.members))}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise SegleakError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])


def _shuffled(ids: Sequence[str], rng: np.random.Generator) -> list[str]:
    ordered = sorted(ids)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _check_count(name: str, value: int) -> None:
    if value < 1:
        raise SegleakError(f"{name} must be >= 1, got {value}")


def _unique(ids: Sequence[str], what: str) -> list[str]:
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise SegleakError(f"{what} contains duplicate ids")
    return ids


def dependent_manifest(ids: Sequence[str], *, dataset: str, n_victim_members: int, n_victim_nonmembers: int,
                       n_shadow_members: int, n_shadow_nonmembers: int, overlap: float, seed: int,
                       placebo: bool = False, victim_pool: Sequence[str] | None = None) -> Manifest:
    """Victim and shadow drawn from one dataset's `ids`, the shadow overlapping the victim by `overlap`.

    `victim_pool` (default: all ids) restricts where the victim's lists come from (the paper draws them
    from Cityscapes train only); the shadow's other images come from the rest of `ids`.
    """
    if not 0.0 <= overlap <= 1.0:
        raise SegleakError(f"overlap must be in [0, 1], got {overlap}")
    sizes = {"n_victim_members": n_victim_members, "n_victim_nonmembers": n_victim_nonmembers,
             "n_shadow_members": n_shadow_members, "n_shadow_nonmembers": n_shadow_nonmembers}
    for name, value in sizes.items():
        _check_count(name, value)
    ids = _unique(ids, f"{dataset} ids")
    pool = _unique(ids if victim_pool is None else victim_pool, "victim pool")
    if not set(pool) <= set(ids):
        raise SegleakError("the victim pool has ids that are not in the dataset")
    n_victim = n_victim_members + n_victim_nonmembers
    if n_victim > len(pool):
        raise SegleakError(f"{n_victim_members} victim members + {n_victim_nonmembers} non-members need "
                           f"{n_victim} images, the victim pool has {len(pool)}")
    victim = _shuffled(pool, _rng(seed, 0))
    members, nonmembers = victim[:n_victim_members], victim[n_victim_members:n_victim]
    rest = _shuffled(set(ids) - set(members) - set(nonmembers), _rng(seed, 1))
    n_fresh = n_shadow_members + n_shadow_nonmembers
    if n_fresh > len(rest):
        raise SegleakError(
            f"pools too small: the shadow needs {n_fresh} images the victim never saw, but only {len(rest)} "
            f"of {len(ids)} {dataset} images are left after the victim's {n_victim}"
        )
    k = round(overlap * n_shadow_members)
    shared = _shuffled(members, _rng(seed, 2))[:k]
    fresh = rest[:n_fresh]
    shadow_members = shared + fresh[: n_shadow_members - k]
    # the placebo victim must never see either query set; images nobody uses come first, then the shadow's
    # (the attack never sees the placebo victim's training data), so even the paper's sizes, which use
    # every image, leave it up to n_victim_members images to train on
    victim_train = (rest[n_fresh:] + rest[:n_fresh])[:n_victim_members] if placebo else members
    return Manifest(
        setting="dependent", dataset=dataset, shadow_dataset=dataset, seed=seed, overlap=float(overlap),
        placebo=placebo, victim=RoleSplit.of(victim_train, members, nonmembers),
        shadow=RoleSplit.of(shadow_members, shadow_members, fresh[n_shadow_members:]),
    )


def independent_manifest(*, dataset: str, victim_member_ids: Sequence[str], victim_nonmember_ids: Sequence[str],
                         shadow_dataset: str, shadow_ids: Sequence[str], n_shadow_members: int,
                         n_shadow_nonmembers: int, seed: int, placebo: bool = False,
                         placebo_ids: Sequence[str] = ()) -> Manifest:
    """Victim lists given (e.g. Cityscapes train vs val), shadow drawn from another dataset's `shadow_ids`.

    With `placebo`, the victim trains on `placebo_ids`, which must be disjoint from both query sets.
    """
    _check_count("n_shadow_members", n_shadow_members)
    _check_count("n_shadow_nonmembers", n_shadow_nonmembers)
    members = _unique(victim_member_ids, "victim members")
    nonmembers = _unique(victim_nonmember_ids, "victim non-members")
    shadow_ids = _unique(shadow_ids, f"{shadow_dataset} ids")
    if set(members) & set(nonmembers):
        raise SegleakError("victim members and non-members share ids")
    if placebo and not placebo_ids:
        raise SegleakError("a placebo manifest needs placebo_ids for the victim to train on")
    if set(placebo_ids) & (set(members) | set(nonmembers)):
        raise SegleakError("placebo_ids overlap the victim's members or non-members")
    n = n_shadow_members + n_shadow_nonmembers
    if n > len(shadow_ids):
        raise SegleakError(f"{n_shadow_members} shadow members + {n_shadow_nonmembers} non-members need {n} "
                           f"images, {shadow_dataset} has {len(shadow_ids)}")
    shadow = _shuffled(shadow_ids, _rng(seed, 3))
    return Manifest(
        setting="independent", dataset=dataset, shadow_dataset=shadow_dataset, seed=seed, overlap=0.0,
        placebo=placebo, victim=RoleSplit.of(placebo_ids if placebo else members, members, nonmembers),
        shadow=RoleSplit.of(shadow[:n_shadow_members], shadow[:n_shadow_members], shadow[n_shadow_members:n]),
    )


def make_manifest(dataset: str, root: Path, overlap: float, seed: int, recipe: str = "auto",
                  shadow_dataset: str | None = None, shadow_root: Path | None = None,
                  placebo: bool = False) -> Manifest:
    """The manifest `segleak splits` writes, from the images found under `root` (and `shadow_root`).

    recipe "paper": the paper's sizes. Dependent (Cityscapes only): victim 1488 members / 912 non-members
    from train, shadow 555 / 520 from the rest of train plus val. Independent: the victim's members are
    all of the dataset's train, non-members all of val; shadow BDD100K 4000 / 4000, Mapillary 10000 / 10000.
    recipe "auto": dependent uses train+val and gives each of victim members, victim non-members, shadow
    members, shadow non-members and the placebo victim's training set a fifth of the images (the fifth
    is kept free even without placebo, so the placebo manifest queries the same images with the same
    shadow); independent is as in "paper" with the shadow's train+val split in halves.
    An independent placebo victim trains on a seeded half of train and is queried with the other half.
    """
    from benchmark.data.adapters import get_adapter

    if recipe not in ("auto", "paper"):
        raise SegleakError(f"unknown recipe {recipe!r}; known: auto, paper")
    ids = [s.id for s in get_adapter(dataset).list_samples(root)]
    if shadow_dataset is None and shadow_root is None:
        if recipe == "paper":
            if dataset not in PAPER_DEPENDENT:
                raise SegleakError(f"the paper recipe has dependent splits for cityscapes only, not {dataset}")
            sizes = PAPER_DEPENDENT[dataset]
            victim_pool = [i for i in ids if i.startswith("train/")]
        else:
            n = int(len(ids) * AUTO_FRACTION)
            if n < 1:
                raise SegleakError(f"pools too small: the auto recipe needs at least 5 images, {root} has {len(ids)}")
            sizes, victim_pool = (n, n, n, n), None
        return dependent_manifest(
            ids, dataset=dataset, n_victim_members=sizes[0], n_victim_nonmembers=sizes[1],
            n_shadow_members=sizes[2], n_shadow_nonmembers=sizes[3], overlap=overlap, seed=seed,
            placebo=placebo, victim_pool=victim_pool,
        )
    if shadow_dataset is None or shadow_root is None:
        raise SegleakError("the independent setting needs both --shadow-dataset and --shadow-root")
    if shadow_dataset == dataset:
        raise SegleakError(f"shadow dataset {shadow_dataset} is the victim's: omit it for the dependent setting")
    if overlap != 0.0:
        raise SegleakError(f"overlap {overlap} applies only to the dependent setting (no shadow dataset)")
    shadow_ids = [s.id for s in get_adapter(shadow_dataset).list_samples(shadow_root)]
    if recipe == "paper":
        if shadow_dataset not in PAPER_SHADOW:
            raise SegleakError(f"the paper recipe has no independent shadow split for {shadow_dataset}")
        n_sm, n_sn = PAPER_SHADOW[shadow_dataset]
    else:
        n_sm = n_sn = len(shadow_ids) // 2
    members = [i for i in ids if i.startswith("train/")]
    nonmembers = [i for i in ids if i.startswith("val/")]
    placebo_ids: list[str] = []
    if placebo:
        half = _shuffled(members, _rng(seed, 4))
        members, placebo_ids = half[: len(half) // 2], half[len(half) // 2:]
    return independent_manifest(
        dataset=dataset, victim_member_ids=members, victim_nonmember_ids=nonmembers,
        shadow_dataset=shadow_dataset, shadow_ids=shadow_ids, n_shadow_members=n_sm, n_shadow_nonmembers=n_sn,
        seed=seed, placebo=placebo, placebo_ids=placebo_ids,
    )


def write_manifest(manifest: Manifest, path: Path) -> str:
    """Write the JSON and `<path>.sha256` (sha256sum format) atomically; returns the digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = manifest.digest()
    _write_atomic(path, manifest.to_json())
    _write_atomic(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
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


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
