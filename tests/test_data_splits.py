import json

import pytest

from benchmark.cli import main
from benchmark.data.splits import (
    Manifest,
    dependent_manifest,
    independent_manifest,
    make_manifest,
    read_manifest,
    write_manifest,
)
from benchmark.errors import SegleakError

IDS = [f"train/img_{i:04d}" for i in range(300)] + [f"val/img_{i:04d}" for i in range(100)]
SIZES = {"n_victim_members": 80, "n_victim_nonmembers": 60, "n_shadow_members": 50, "n_shadow_nonmembers": 40}


def dep(overlap: float = 0.5, seed: int = 0, placebo: bool = False, **kw) -> Manifest:
    return dependent_manifest(IDS, dataset="cityscapes", overlap=overlap, seed=seed, placebo=placebo, **(SIZES | kw))


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
    assert set(v.members) | set(v.nonmembers) | set(s.members) | set(s.nonmembers) <= set(IDS)


def test_victim_independent_of_overlap_and_nested_overlap():
    ms = {f: dep(f) for f in (0.0, 0.5, 1.0)}
    assert len({(m.victim.train, m.victim.members, m.victim.nonmembers) for m in ms.values()}) == 1
    assert len({m.shadow.nonmembers for m in ms.values()}) == 1
    shared = {f: set(m.shadow.members) & set(m.victim.members) for f, m in ms.items()}
    assert shared[0.0] == set() and shared[0.5] < shared[1.0] and len(shared[1.0]) == 50


def test_placebo_keeps_query_sets_and_shadow():
    normal, placebo = dep(0.5), dep(0.5, placebo=True)
    v = placebo.victim
    assert len(v.train) == len(v.members) == 80
    assert not set(v.train) & (set(v.members) | set(v.nonmembers))
    assert not set(v.train) & (set(placebo.shadow.members) | set(placebo.shadow.nonmembers))
    assert (v.members, v.nonmembers) == (normal.victim.members, normal.victim.nonmembers)
    assert placebo.shadow == normal.shadow


def test_placebo_falls_back_to_shadow_images_never_to_query_sets():
    # overlap 0: the shadow uses its whole pool of 250, leaving 10 images that nobody uses
    normal = dep(0.0, n_shadow_members=150, n_shadow_nonmembers=100)
    placebo = dep(0.0, placebo=True, n_shadow_members=150, n_shadow_nonmembers=100)
    v, shadow = placebo.victim, set(placebo.shadow.members) | set(placebo.shadow.nonmembers)
    assert len(v.train) == 80 and not set(v.train) & (set(v.members) | set(v.nonmembers))
    unused = set(IDS) - set(v.members) - set(v.nonmembers) - shadow
    assert len(unused) == 10 and unused <= set(v.train) and len(set(v.train) & shadow) == 70
    assert placebo.shadow == normal.shadow


def test_same_seed_byte_identical_other_seed_different(tmp_path):
    a, b, c = dep(seed=3), dependent_manifest(list(reversed(IDS)), dataset="cityscapes", overlap=0.5, seed=3, **SIZES), dep(seed=4)
    assert a.to_json() == b.to_json() and a.digest() == b.digest()
    assert a.to_json() != c.to_json()
    data = json.loads(a.to_json())
    assert data["victim"]["members"] == sorted(data["victim"]["members"])
    assert list(data) == sorted(data) and data["version"] == 1 and data["setting"] == "dependent"


@pytest.mark.parametrize("kwargs,match", [
    ({"overlap": 1.5}, "overlap must be in \\[0, 1\\], got 1.5"),
    ({"overlap": -0.1}, "overlap must be in"),
    ({"n_victim_members": 500}, "500 victim members"),
    ({"n_shadow_members": 300}, "pools too small"),
    ({"n_shadow_nonmembers": 0}, "n_shadow_nonmembers must be >= 1, got 0"),
    ({"seed": -1}, "seed"),
])
def test_dependent_refusals(kwargs, match):
    with pytest.raises(SegleakError, match=match):
        dep(**kwargs)


def test_independent_manifest():
    victim_train = [f"train/c{i}" for i in range(30)]
    victim_val = [f"val/c{i}" for i in range(10)]
    shadow = [f"train/b{i}" for i in range(40)]
    m = independent_manifest(dataset="cityscapes", victim_member_ids=victim_train, victim_nonmember_ids=victim_val,
                             shadow_dataset="bdd100k", shadow_ids=shadow, n_shadow_members=20,
                             n_shadow_nonmembers=20, seed=0)
    assert m.setting == "independent" and m.shadow_dataset == "bdd100k"
    assert set(m.victim.members) == set(victim_train) and m.victim.train == m.victim.members
    assert not set(m.shadow.members) & set(m.shadow.nonmembers) and len(m.shadow.members) == 20
    with pytest.raises(SegleakError, match="placebo_ids overlap"):
        independent_manifest(dataset="cityscapes", victim_member_ids=victim_train, victim_nonmember_ids=victim_val,
                             shadow_dataset="bdd100k", shadow_ids=shadow, n_shadow_members=20,
                             n_shadow_nonmembers=20, seed=0, placebo=True, placebo_ids=victim_val[:2])
    with pytest.raises(SegleakError, match="need 50 images, bdd100k has 40"):
        independent_manifest(dataset="cityscapes", victim_member_ids=victim_train, victim_nonmember_ids=victim_val,
                             shadow_dataset="bdd100k", shadow_ids=shadow, n_shadow_members=25,
                             n_shadow_nonmembers=25, seed=0)


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
    m = make_manifest("cityscapes", cs, overlap=0.4, seed=1, recipe="auto", shadow_dataset=None, shadow_root=None,
                      placebo=False)
    assert len(m.victim.members) == len(m.shadow.nonmembers) == 5
    assert len(set(m.shadow.members) & set(m.victim.members)) == 2
    p = make_manifest("cityscapes", cs, overlap=0.4, seed=1, recipe="auto", shadow_dataset=None, shadow_root=None,
                      placebo=True)
    assert p.victim.members == m.victim.members and p.shadow == m.shadow
    ind = make_manifest("cityscapes", cs, overlap=0.0, seed=0, recipe="auto", shadow_dataset="bdd100k",
                        shadow_root=synthetic_tree("bdd100k"), placebo=False)
    assert len(ind.victim.members) == 20 and len(ind.victim.nonmembers) == 5 and len(ind.shadow.members) == 5
    with pytest.raises(SegleakError, match="1488 victim members"):  # the paper's sizes need the real dataset
        make_manifest("cityscapes", cs, overlap=0.0, seed=0, recipe="paper", shadow_dataset=None,
                      shadow_root=None, placebo=False)
    with pytest.raises(SegleakError, match="overlap 0.5 applies only"):
        make_manifest("cityscapes", cs, overlap=0.5, seed=0, recipe="auto", shadow_dataset="bdd100k",
                      shadow_root=synthetic_tree("bdd100k"), placebo=False)


def test_paper_recipe_sizes(monkeypatch):
    """The paper's dependent split uses exactly Cityscapes' 2975 train + 500 val images."""
    from benchmark.data import adapters

    class FakeCityscapes(adapters.CityscapesAdapter):
        def list_samples(self, root, split=None):
            ids = [f"train/c{i:04d}" for i in range(2975)] + [f"val/c{i:04d}" for i in range(500)]
            return [adapters.Sample(i, root, root) for i in ids]

    monkeypatch.setitem(adapters.ADAPTERS, "cityscapes", FakeCityscapes)
    m = make_manifest("cityscapes", "/fake", overlap=1.0, seed=0, recipe="paper", shadow_dataset=None,
                      shadow_root=None, placebo=False)
    assert (len(m.victim.members), len(m.victim.nonmembers), len(m.shadow.members), len(m.shadow.nonmembers)) == \
        (1488, 912, 555, 520)
    assert all(i.startswith("train/") for i in m.victim.members + m.victim.nonmembers)
    placebo = make_manifest("cityscapes", "/fake", overlap=0.0, seed=0, recipe="paper", shadow_dataset=None,
                            shadow_root=None, placebo=True)
    # every image is in a query set or the shadow's pool: the placebo victim trains on the 1075 shadow-pool images
    assert len(placebo.victim.train) == 1075
    assert not set(placebo.victim.train) & (set(placebo.victim.members) | set(placebo.victim.nonmembers))


def test_cli_splits(synthetic_tree, tmp_path, capsys):
    cs = synthetic_tree("cityscapes", n_train=20, n_val=5)
    out = tmp_path / "m.json"
    assert main(["splits", "--dataset", "cityscapes", "--root", str(cs), "--overlap", "0.5", "--out", str(out)]) == 0
    assert "sha256" in capsys.readouterr().out and read_manifest(out).overlap == 0.5
    assert main(["splits", "--dataset", "cityscapes", "--root", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
