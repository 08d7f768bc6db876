"""Audit canaries: the seeded inclusion draw recorded in the manifest, the kinds dealt to canaries, the
crafted label maps, and the dataset view that applies them on read (no second copy of the data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmark.audit.canaries import craft_label, deal_kinds, id_rng
from benchmark.data.adapters import get_adapter
from benchmark.data.splits import ImageIndex, Manifest, SplitSpec, dependent_manifest, independent_manifest
from benchmark.errors import SegleakError

INDEX = ImageIndex("cityscapes", {"train": tuple(f"train/img_{i:04d}" for i in range(300)),
                                  "val": tuple(f"val/img_{i:04d}" for i in range(100))})
SPEC = SplitSpec(victim_members=60, victim_nonmembers=60, shadow_members=40, shadow_nonmembers=40, canaries=80)


def test_the_inclusion_draw_is_a_seeded_subset_recorded_in_the_manifest():
    m = dependent_manifest(INDEX, SPEC, overlap=0.5, seed=3)
    canaries, included = set(m.pool("canaries")), set(m.pool("canaries_in"))
    assert len(canaries) == 80 and included < canaries and 25 <= len(included) <= 55
    assert not canaries & (m.victim.queried | m.shadow.queried | set(m.victim.train))
    # the same draw at every overlap and for the placebo manifest; another seed draws again
    assert dependent_manifest(INDEX, SPEC, overlap=1.0, seed=3).pool("canaries_in") == m.pool("canaries_in")
    assert dependent_manifest(INDEX, SPEC, overlap=0.5, seed=3, placebo=True).pool("canaries_in") == m.pool("canaries_in")
    assert dependent_manifest(INDEX, SPEC, overlap=0.5, seed=4).pool("canaries_in") != m.pool("canaries_in")
    # round trip through JSON keeps it, and a hand-edited draw naming a non-canary is refused
    assert Manifest.from_dict(m.to_dict()).pool("canaries_in") == m.pool("canaries_in")
    bad = m.to_dict()
    bad["pools"]["canaries_in"] = [*bad["pools"]["canaries_in"], sorted(bad["pools"]["attacker"])[0]]
    with pytest.raises(SegleakError, match="canaries_in"):
        Manifest.from_dict(bad)


def test_independent_setting_draws_canaries_too():
    shadow = ImageIndex("bdd100k", {"train": tuple(f"train/b{i:03d}" for i in range(100)), "val": ()})
    m = independent_manifest(INDEX, shadow, dataclasses.replace(SPEC, victim_members=48, victim_nonmembers=50),
                             seed=0)
    assert len(m.pool("canaries")) == 80 and set(m.pool("canaries_in")) < set(m.pool("canaries"))


def test_kinds_are_dealt_in_equal_seeded_shares():
    ids = [f"train/c{i:02d}" for i in range(31)]
    dealt = deal_kinds(ids, ["natural", "permuted"], seed=0)
    assert sorted(dealt["natural"] + dealt["permuted"]) == sorted(ids)
    assert {len(v) for v in dealt.values()} == {15, 16}
    assert dealt == deal_kinds(list(reversed(ids)), ["natural", "permuted"], seed=0)  # order-free
    assert dealt != deal_kinds(ids, ["natural", "permuted"], seed=1)
    with pytest.raises(SegleakError, match="distinct values"):
        deal_kinds(ids, ["natural", "natural"], seed=0)
    with pytest.raises(SegleakError, match="distinct values"):
        deal_kinds(ids, ["mislabelled"], seed=0)


def test_crafted_label_maps_change_every_labelled_pixel_and_keep_ignore():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (16, 32)).astype(np.uint8)
    label[:2] = 255
    permuted = craft_label(label, "permuted", 19, 255, id_rng(0, "a"))
    valid = label != 255
    assert (permuted[~valid] == 255).all() and (permuted[valid] != label[valid]).all()
    # one class map: pixels of one class stay together (the scene's layout is kept)
    pairs = set(zip(label[valid].tolist(), permuted[valid].tolist()))
    assert len(pairs) == len(np.unique(label[valid]))
    assert np.array_equal(permuted, craft_label(label, "permuted", 19, 255, id_rng(0, "a")))  # by id and seed
    assert not np.array_equal(permuted, craft_label(label, "permuted", 19, 255, id_rng(0, "b")))
    few = np.where(valid, label % 5, 255).astype(np.uint8)  # classes 0-4 present
    constant = craft_label(few, "constant", 19, 255, id_rng(0, "a"))
    assert len(np.unique(constant[valid])) == 1 and constant[valid][0] >= 5 and (constant[~valid] == 255).all()
    assert (craft_label(label, "masked", 19, 255, id_rng(0, "a")) == 255).all()
    with pytest.raises(SegleakError, match="unknown canary label transform"):
        craft_label(label, "flipped", 19, 255, id_rng(0, "a"))


def test_the_view_reads_crafted_labels_for_canaries_only(small_cityscapes):
    root, ids = small_cityscapes
    base = get_adapter("cityscapes")
    view = get_adapter({"type": "canary_view", "base": {"type": "cityscapes"}, "seed": 5,
                        "labels": {ids[0]: "permuted", ids[1]: "constant", ids[2]: "masked"}})
    samples = {s.id: s for s in view.list_samples(root)}
    assert list(samples) == [s.id for s in base.list_samples(root)]
    for i in ids[:4]:
        assert np.array_equal(view.read_image(samples[i]), base.read_image(samples[i]))
        assert view.group_of(i) == base.group_of(i)
    natural = base.read_label(samples[ids[0]])
    assert not np.array_equal(view.read_label(samples[ids[0]]), natural)
    assert (view.read_label(samples[ids[2]]) == 255).all()
    assert np.array_equal(view.read_label(samples[ids[3]]), base.read_label(samples[ids[3]]))  # not a canary
    # the spec rebuilds the same view on any node
    again = get_adapter(view.spec)
    assert np.array_equal(again.read_label(samples[ids[0]]), view.read_label(samples[ids[0]]))
    assert view.num_classes == base.num_classes and view.ignore_index == base.ignore_index


def test_the_view_refuses_bad_specs():
    with pytest.raises(SegleakError, match="labels.x: unknown transform 'shuffled'"):
        get_adapter({"type": "canary_view", "base": {"type": "cityscapes"}, "labels": {"x": "shuffled"}})
    with pytest.raises(SegleakError, match="not another canary view"):
        get_adapter({"type": "canary_view", "base": {"type": "canary_view", "base": {"type": "cityscapes"}}})
