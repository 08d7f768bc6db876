"""The plan shares work between grid cells, and its keys depend on exactly what a unit computes."""

from __future__ import annotations

import dataclasses

import pytest

from ray_jobs.plan import DataSource, build_plan
from ray_jobs.runner import make_manifests
from ray_jobs.spec import load_grid
from ray_jobs.store import ResultStore


def _sources(n_train: int = 200, n_val: int = 100) -> dict[str, DataSource]:
    sources = {}
    for name in ("cityscapes", "bdd100k"):
        ids = tuple(f"train/{name}_{i:04d}" for i in range(n_train)) + tuple(f"val/{name}_{i:04d}" for i in range(n_val))
        sources[name] = DataSource(name, f"/data/{name}", ids, ids[n_train:])
    return sources


@pytest.fixture()
def default_plan(tmp_path):
    grid = load_grid("default")
    sources = _sources()
    return grid, build_plan(grid, sources, make_manifests(grid, sources, ResultStore(tmp_path)))


def test_models_are_shared_across_overlaps_defenses_and_attacks(default_plan):
    grid, plan = default_plan
    training = [d for d in grid.defenses if not d.output_side]
    archs = len(grid.victim_archs)
    victims = [u for u in plan.of_kind("model") if u.meta["role"] == "victim"]
    shadows = [u for u in plan.of_kind("model") if u.meta["role"] == "shadow"]
    # per setting: one undefended victim + one per training-side defense (+ the placebo victim), per arch
    assert len(victims) == len(grid.settings) * archs * (1 + len(training) + 1)
    # dependent: one shadow per overlap; independent: one; per arch
    assert len(shadows) == archs * (len(grid.overlaps) + 1)
    counts = plan.counts()
    assert counts["model"] < counts["naive_models"] / 10
    # one attack model per (shadow, output defense seen by the shadow, attack)
    output_side = [d for d in grid.defenses if d.output_side]
    assert counts["attack"] == len(shadows) * len(output_side) * len(grid.attacks)


def test_every_cell_is_planned_once(default_plan):
    grid, plan = default_plan
    cells = plan.of_kind("cell")
    per_dependent = len(grid.overlaps) * len(grid.defenses) * len(grid.attacks) * len(grid.victim_archs)
    per_independent = len(grid.defenses) * len(grid.attacks) * len(grid.victim_archs)
    placebo = len(grid.settings) * len(grid.attacks) * len(grid.victim_archs)
    assert len(cells) == per_dependent + per_independent + placebo
    assert len({tuple(sorted((k, str(v)) for k, v in u.meta.items())) for u in cells}) == len(cells)


def test_dependencies_point_to_planned_units_of_the_previous_stage(default_plan):
    _, plan = default_plan
    previous = {"release": {"model"}, "attack": {"release"}, "cell": {"attack", "release"}, "model": set()}
    for unit in plan.units.values():
        assert {plan.units[d].kind for d in unit.deps} == previous[unit.kind]


def test_keys_are_stable_and_sensitive_to_inputs(tmp_path):
    grid = load_grid("smoke")
    sources = _sources()
    keys = set(build_plan(grid, sources, make_manifests(grid, sources, ResultStore(tmp_path))).units)
    again = set(build_plan(grid, sources, make_manifests(grid, sources, ResultStore(tmp_path))).units)
    assert keys == again
    longer = dataclasses.replace(grid, train={**grid.train, "epochs": grid.train["epochs"] + 1})
    changed = build_plan(longer, sources, make_manifests(longer, sources, ResultStore(tmp_path)))
    model_keys = {u.key for u in changed.of_kind("model")}
    assert not model_keys & keys  # every model retrains when its recipe changes
    other_seed = dataclasses.replace(grid, seeds=(1,))
    reseeded = build_plan(other_seed, sources, make_manifests(other_seed, sources, ResultStore(tmp_path)))
    assert not set(reseeded.units) & keys


def test_placebo_victim_never_trains_on_queried_images(default_plan):
    _, plan = default_plan
    for cell in plan.of_kind("cell"):
        release = plan.units[cell.config["release"]]
        model = plan.units[release.deps[0]]
        queried = set(release.config["members"]) | set(release.config["nonmembers"])
        trained = set(model.config["train_ids"])
        if cell.meta["control"] == "placebo":
            assert not trained & queried
        else:
            assert trained == set(release.config["members"]) and not trained & set(release.config["nonmembers"])


def test_manifests_are_written_next_to_their_digest(tmp_path):
    grid = load_grid("smoke")
    manifests = make_manifests(grid, _sources(), ResultStore(tmp_path))
    written = sorted((tmp_path / "splits").glob("*.json"))
    assert len(written) == len(manifests) == 2  # the overlap's manifest and the placebo one
    for manifest in manifests.values():
        assert (tmp_path / "splits" / f"{manifest.digest()[:16]}.json").read_text() == manifest.to_json()
