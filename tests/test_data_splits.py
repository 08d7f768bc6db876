"""Membership manifests: disjointness and exact overlap by construction, byte-identical per seed, group-aware
splits (no group on two sides), seeded draws everywhere, named pools outside every query set, and the
paper's recipe through the same functions the benchmark's runner calls."""

import json

import pytest

from benchmark.cli import main
from benchmark.data.splits import (
    ImageIndex,
    Manifest,
    SplitSpec,
    dependent_manifest,
    independent_manifest,
    make_manifest,
    read_manifest,
    write_manifest,
)
from benchmark.errors import SegleakError

TRAIN = tuple(f"train/img_{i:04d}" for i in range(300))
VAL = tuple(f"val/img_{i:04d}" for i in range(100))
INDEX = ImageIndex("cityscapes", {"train": TRAIN, "val": VAL})
SPEC = SplitSpec(victim_members=80, victim_nonmembers=60, shadow_members=50, shadow_nonmembers=40)


def spec(**kw) -> SplitSpec:
    return SplitSpec(**{**SPEC.__dict__, **kw})


def dep(overlap: float = 0.5, seed: int = 0, placebo: bool = False, index: ImageIndex = INDEX, **kw) -> Manifest:
    return dependent_manifest(index, spec(**kw), overlap=overlap, seed=seed, placebo=placebo)


@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.25, 0.5, 0.7, 1.0])
def test_dependent_disjoint_and_exact_overlap(overlap):
    m = dep(overlap)
    v, s = m.victim, m.shadow
    assert len(v.members) == 80 and len(v.nonmembers) == 60 and len(s.members) == 50 and len(s.nonmembers) == 40
    assert not set(v.members) & set(v.nonmembers) and not set(s.members) & set(s.nonmembers)
    assert v.train == v.members and s.train == s.members
    k = round(overlap * 50)
    assert len(set(s.members) & set(v.members)) == k
    victim_seen = set(v.train) | set(v.members) | set(v.nonmembers)
    assert not (set(s.members) - set(v.members)) & victim_seen  # the rest: never seen by the victim
    assert not set(s.nonmembers) & victim_seen
    # scored: the victim's query images minus the attacker's own training images
    members, nonmembers = m.scored()
    assert len(members) == 80 - k and len(nonmembers) == 60 and not set(members) & set(s.members)
    assert not set(m.pool("attacker")) & m.victim.queried and set(s.nonmembers) <= set(m.pool("attacker"))


def test_victim_independent_of_overlap_and_nested_overlap():
    ms = {f: dep(f) for f in (0.0, 0.5, 1.0)}
    assert len({(m.victim.train, m.victim.members, m.victim.nonmembers) for m in ms.values()}) == 1
    assert len({m.shadow.nonmembers for m in ms.values()}) == 1
    assert len({m.pool("attacker") for m in ms.values()}) == 1  # the reference models' pool never moves
    shared = {f: set(m.shadow.members) & set(m.victim.members) for f, m in ms.items()}
    assert shared[0.0] == set() and shared[0.5] < shared[1.0] and len(shared[1.0]) == 50


def test_placebo_keeps_query_sets_and_shadow():
    normal, placebo = dep(0.5), dep(0.5, placebo=True)
    v = placebo.victim
    assert len(v.train) == len(v.members) == 80
    assert not set(v.train) & (set(v.members) | set(v.nonmembers))
    assert not set(v.train) & (set(placebo.shadow.members) | set(placebo.shadow.nonmembers))
    assert (v.members, v.nonmembers) == (normal.victim.members, normal.victim.nonmembers)
    assert placebo.shadow == normal.shadow and placebo.scored() == normal.scored()


def test_placebo_falls_back_to_shadow_images_never_to_query_sets():
    # overlap 0: the shadow uses its whole pool of 250, leaving 10 images that nobody uses
    normal = dep(0.0, shadow_members=150, shadow_nonmembers=100)
    placebo = dep(0.0, placebo=True, shadow_members=150, shadow_nonmembers=100)
    v, shadow = placebo.victim, set(placebo.shadow.members) | set(placebo.shadow.nonmembers)
    assert len(v.train) == 80 and not set(v.train) & (set(v.members) | set(v.nonmembers))
    unused = set(INDEX.ids) - set(v.members) - set(v.nonmembers) - shadow
    assert len(unused) == 10 and unused <= set(v.train) and len(set(v.train) & shadow) == 70
    assert placebo.shadow == normal.shadow


def test_pools_are_outside_every_query_set_and_drawn_in_a_fixed_order():
    m = dep(0.5, reference=20, canaries=30)
    query = m.victim.queried | m.shadow.queried
    for name in ("victim_reference", "shadow_reference", "canaries"):
        assert len(m.pool(name)) in (20, 30) and not set(m.pool(name)) & query
    assert not set(m.pool("victim_reference")) & set(m.pool("shadow_reference"))
    # asking for canaries or a placebo never moves the reference sets, and vice versa
    assert dep(0.5, reference=20).pools["victim_reference"] == m.pools["victim_reference"]
    assert dep(0.5, placebo=True, reference=20, canaries=30).pools == m.pools
    with pytest.raises(SegleakError, match="audit canaries"):
        dep(0.5, canaries=500)


def test_same_seed_byte_identical_other_seed_different(tmp_path):
    reversed_index = ImageIndex("cityscapes", {"train": TRAIN[::-1], "val": VAL[::-1]})
    a, b, c = dep(seed=3), dep(seed=3, index=reversed_index), dep(seed=4)
    assert a.to_json() == b.to_json() and a.digest() == b.digest()
    assert a.to_json() != c.to_json()
    data = json.loads(a.to_json())
    assert data["victim"]["members"] == sorted(data["victim"]["members"])
    assert list(data) == sorted(data) and data["version"] == 2 and data["setting"] == "dependent"


@pytest.mark.parametrize("kwargs,match", [
    ({"overlap": 1.5}, "overlap must be in \\[0, 1\\], got 1.5"),
    ({"overlap": -0.1}, "overlap must be in"),
    ({"victim_members": 500}, "500 victim members"),
    ({"shadow_members": 300}, "pools too small"),
    ({"shadow_nonmembers": 0}, "shadow_nonmembers must be >= 1, got 0"),
    ({"seed": -1}, "seed"),
])
def test_dependent_refusals(kwargs, match):
    with pytest.raises(SegleakError, match=match):
        dep(**kwargs)


def _groups(ids, size):
    return {i: f"{i.split('/')[0]}/seq{n // size}" for n, i in enumerate(ids)}


def test_group_split_never_puts_one_group_on_two_sides():
    groups = {**_groups(TRAIN, 5), **_groups(VAL, 5)}
    index = ImageIndex("cityscapes", {"train": TRAIN, "val": VAL}, groups)
    for overlap in (0.0, 0.5):
        m = dependent_manifest(index, spec(reference=10, canaries=10), overlap=overlap, seed=1, placebo=True)
        sets = {"victim members": m.victim.members, "victim non-members": m.victim.nonmembers,
                "shadow fresh": set(m.shadow.queried) - set(m.victim.members), "placebo": m.victim.train,
                **{name: m.pool(name) for name in ("victim_reference", "shadow_reference", "canaries")}}
        of = {name: {groups[i] for i in ids} for name, ids in sets.items()}
        names = list(of)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if {a, b} != {"placebo", "shadow fresh"}:  # the placebo may train on the attacker's images
                    assert not of[a] & of[b], (a, b)
        # scored members exclude whole groups the attacker trained on, near-duplicates included
        members, _ = m.scored()
        assert not {groups[i] for i in members} & {groups[i] for i in m.shadow.queried}
    image_level = dependent_manifest(index, spec(group_split=False), overlap=0.0, seed=1)
    assert {groups[i] for i in image_level.victim.members} & {groups[i] for i in image_level.victim.nonmembers}


def test_independent_draws_are_seeded_and_the_iid_variant_holds_out_train():
    victim = ImageIndex("cityscapes", {"train": tuple(f"train/c{i:03d}" for i in range(60)),
                                       "val": tuple(f"val/c{i:03d}" for i in range(20))})
    shadow = ImageIndex("bdd100k", {"train": tuple(f"train/b{i:03d}" for i in range(40)), "val": ()})
    sizes = SplitSpec(victim_members=30, victim_nonmembers=10, shadow_members=20, shadow_nonmembers=20)
    m = independent_manifest(victim, shadow, sizes, seed=0)
    assert m.setting == "independent" and m.shadow_dataset == "bdd100k"
    assert all(i.startswith("train/") for i in m.victim.members) and all(i.startswith("val/") for i in m.victim.nonmembers)
    assert m.victim.members != tuple(sorted(victim.splits["train"][:30]))  # a seeded shuffle, not the first 30
    assert independent_manifest(victim, shadow, sizes, seed=1).victim.members != m.victim.members
    iid = independent_manifest(victim, shadow, SplitSpec(**{**sizes.__dict__, "nonmembers_from": "train"}), seed=0)
    assert all(i.startswith("train/") for i in iid.victim.members + iid.victim.nonmembers)
    assert not set(iid.victim.members) & set(iid.victim.nonmembers)
    placebo = independent_manifest(victim, shadow, sizes, seed=0, placebo=True)
    assert not set(placebo.victim.train) & placebo.victim.queried and len(placebo.victim.train) == 30
    with pytest.raises(SegleakError, match="pools too small"):
        independent_manifest(victim, shadow, SplitSpec(**{**sizes.__dict__, "shadow_members": 25,
                                                          "shadow_nonmembers": 25}), seed=0)


def test_write_read_roundtrip_and_tamper(tmp_path):
    m = dep()
    path = tmp_path / "out" / "manifest.json"
    digest = write_manifest(m, path)
    assert digest == m.digest() and path.read_text() == m.to_json()
    assert (tmp_path / "out" / "manifest.json.sha256").read_text() == f"{digest}  manifest.json\n"
    assert read_manifest(path) == m
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "manifest.json.sha256"]
    data = json.loads(path.read_text())
    data["shadow"]["nonmembers"].append(data["victim"]["members"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(SegleakError, match="does not match its digest"):
        read_manifest(path)
    path.with_name("manifest.json.sha256").unlink()
    with pytest.raises(SegleakError, match="invalid"):  # the invariants are re-checked on read
        read_manifest(path)


def test_make_manifest_on_synthetic_trees(synthetic_tree):
    cs = synthetic_tree("cityscapes", n_train=20, n_val=5)
    m = make_manifest("cityscapes", cs, overlap=0.4, seed=1, recipe="auto")
    assert len(m.victim.members) == len(m.shadow.nonmembers) == 5
    assert len(set(m.shadow.members) & set(m.victim.members)) == 2
    p = make_manifest("cityscapes", cs, overlap=0.4, seed=1, recipe="auto", placebo=True)
    assert p.victim.members == m.victim.members and p.shadow == m.shadow
    ind = make_manifest("cityscapes", cs, overlap=0.0, seed=0, recipe="auto", shadow_dataset="bdd100k",
                        shadow_root=synthetic_tree("bdd100k"))
    assert len(ind.victim.members) == 20 and len(ind.victim.nonmembers) == 5 and len(ind.shadow.members) == 5
    with pytest.raises(SegleakError, match="1488 victim members"):  # the paper's sizes need the real dataset
        make_manifest("cityscapes", cs, overlap=0.0, seed=0, recipe="paper")
    with pytest.raises(SegleakError, match="overlap 0.5 applies only"):
        make_manifest("cityscapes", cs, overlap=0.5, seed=0, recipe="auto", shadow_dataset="bdd100k",
                      shadow_root=synthetic_tree("bdd100k"))


def _fake_cityscapes(monkeypatch):
    from benchmark.data import adapters
    from benchmark.data.datasets.cityscapes import Cityscapes

    def list_samples(self, root, split=None):
        ids = [f"train/c{i:04d}" for i in range(2975)] + [f"val/c{i:04d}" for i in range(500)]
        return [adapters.Sample(i, root, root) for i in ids if split is None or i.startswith(split)]

    monkeypatch.setattr(Cityscapes, "list_samples", list_samples)


def test_paper_recipe_sizes(monkeypatch):
    """The paper's dependent split uses exactly Cityscapes' 2975 train + 500 val images."""
    _fake_cityscapes(monkeypatch)
    m = make_manifest("cityscapes", "/fake", overlap=1.0, seed=0, recipe="paper")
    assert (len(m.victim.members), len(m.victim.nonmembers), len(m.shadow.members), len(m.shadow.nonmembers)) == \
        (1488, 912, 555, 520)
    assert all(i.startswith("train/") for i in m.victim.members + m.victim.nonmembers)
    placebo = make_manifest("cityscapes", "/fake", overlap=0.0, seed=0, recipe="paper", placebo=True)
    # every image is in a query set or the shadow's pool: the placebo victim trains on the 1075 shadow-pool images
    assert len(placebo.victim.train) == 1075
    assert not set(placebo.victim.train) & (set(placebo.victim.members) | set(placebo.victim.nonmembers))


def test_the_runner_draws_the_paper_profiles_dependent_victim_from_train_only(monkeypatch, tmp_path):
    """Issue 12: the function the benchmark calls (not only `segleak splits`) follows the paper's recipe."""
    _fake_cityscapes(monkeypatch)
    from ray_jobs.grid.sources import DataSource
    from ray_jobs.grid.sources import make_manifests
    from ray_jobs.grid.spec import load_grid
    from ray_jobs.recording.store import ResultStore
    from benchmark.data.adapters import get_adapter
    from benchmark.data.splits import image_index

    grid = load_grid("paper")
    index = image_index("cityscapes", get_adapter("cityscapes"), tmp_path)
    sources = {"cityscapes": DataSource("cityscapes", {"type": "cityscapes"}, "/fake", index)}
    grid = type(grid)(**{**grid.__dict__, "settings": grid.settings[:1], "seeds": (0,)})
    manifests = make_manifests(grid, sources, ResultStore(tmp_path / "r"))
    assert manifests and all(all(i.startswith("train/") for i in m.victim.queried) for m in manifests.values())
    assert {len(m.victim.members) for m in manifests.values()} == {1488}


def test_cli_splits(synthetic_tree, tmp_path, capsys):
    cs = synthetic_tree("cityscapes", n_train=20, n_val=5)
    out = tmp_path / "m.json"
    assert main(["splits", "--dataset", "cityscapes", "--root", str(cs), "--overlap", "0.5", "--out", str(out)]) == 0
    assert "sha256" in capsys.readouterr().out and read_manifest(out).overlap == 0.5
    assert main(["splits", "--dataset", "cityscapes", "--root", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
