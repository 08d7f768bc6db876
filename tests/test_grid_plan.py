"""The plan shares work between grid cells, scores only what the attacker never trained on, attacks
adaptively, runs the null checks everywhere, and keys each unit by exactly what it computes."""

from __future__ import annotations

import dataclasses

import pytest

from benchmark.data.splits import ImageIndex
from ray_jobs.grid.plan import build_plan
from ray_jobs.grid.sources import DataSource, make_manifests
from ray_jobs.grid.spec import load_grid
from ray_jobs.recording.store import ResultStore


def _sources(n_train: int = 400, n_val: int = 200) -> dict[str, DataSource]:
    sources = {}
    for name in ("cityscapes", "bdd100k"):
        index = ImageIndex(name, {"train": tuple(f"train/{name}_{i:04d}" for i in range(n_train)),
                                  "val": tuple(f"val/{name}_{i:04d}" for i in range(n_val))})
        sources[name] = DataSource(name, {"type": name}, f"/data/{name}", index)
    return sources


def _plan(grid, tmp_path):
    sources = _sources()
    return build_plan(grid, sources, make_manifests(grid, sources, ResultStore(tmp_path)))


@pytest.fixture()
def default_plan(tmp_path):
    grid = load_grid("extended")
    return grid, _plan(grid, tmp_path)


def _roles(plan, role):
    return [u for u in plan.of_kind("model") if u.meta and u.meta.role == role]


def test_models_are_shared_across_overlaps_output_defenses_and_attacks(default_plan):
    grid, plan = default_plan
    training = [d for d in grid.defenses if not d.output_side]
    archs = len(grid.victim_archs)
    victims = _roles(plan, "victim")
    # per setting and arch: one victim per training-side defense (`none` included), and a placebo victim
    # for each of them (`placebo_models` of them, training seeds apart, for the undefended recipe)
    n_settings = len(grid.settings)
    assert len({(u.meta.placebo, u.config.defense["name"], str(u.config.defense["params"]), u.config.arch,
                 u.meta.setting, u.config.seed) for u in victims}) == len(victims)
    assert len(victims) <= n_settings * archs * (len(training) * 2 + grid.placebo_models - 1)
    counts = plan.counts()
    assert counts["model"] < counts["naive_models"] / 5


def test_shadows_are_trained_with_the_victims_training_defense(default_plan, tmp_path):
    grid, plan = default_plan
    shadow_defenses = {(u.config.defense["name"], str(u.config.defense["params"])) for u in _roles(plan, "shadow")}
    victim_defenses = {(u.config.defense["name"], str(u.config.defense["params"])) for u in _roles(plan, "victim")}
    assert shadow_defenses == victim_defenses  # adaptive: every training defense has its shadow
    for cell in _shadow_cells(plan):  # reference banks: tests/test_grid_bank.py
        fit = plan.units[cell.config.fit]
        shadow = plan.units[plan.units[fit.config.release].config.model]
        victim = plan.units[cell.config.victim_model]
        assert shadow.config.defense == victim.config.defense and cell.meta.adaptive
        if cell.meta.defense in {d.name for d in grid.defenses if d.output_side}:
            assert fit.config.output_defense == cell.config.output_defense  # passes through the same defense
    naive = dataclasses.replace(grid, adaptive=False)
    plain = _plan(naive, tmp_path / "naive")
    assert {u.config.defense["name"] for u in _roles(plain, "shadow")} == {"none"}
    assert all(not c.meta.adaptive for c in plain.of_kind("cell"))


def _shadow_cells(plan):
    return [c for c in plan.of_kind("cell") if plan.units[c.config.fit].config.release is not None]


def test_cells_score_only_what_the_attacker_never_trained_on(default_plan):
    _, plan = default_plan
    for cell in _shadow_cells(plan):  # (online reference banks train on the query images by design)
        fit = plan.units[cell.config.fit]
        shadow_release = plan.units[fit.config.release]
        attacker_trained = set(shadow_release.config.members) | set(shadow_release.config.nonmembers)
        victim_release = plan.units[cell.config.release]
        queried = set(victim_release.config.members) | set(victim_release.config.nonmembers)
        scored = set(cell.config.scored_ids)
        assert scored <= queried and not scored & attacker_trained
        assert scored == queried - attacker_trained
        if cell.meta.shadow_overlap not in ("n/a", 0.0):
            assert len(scored) < len(queried)


def test_null_checks_run_at_every_overlap_for_every_attack(default_plan):
    grid, plan = default_plan
    placebo = {(c.meta.shadow_overlap, c.meta.attack_label) for c in plan.of_kind("cell") if c.meta.control == "placebo"
               and c.meta.setting == "dependent"}
    assert placebo == {(o, a.label) for o in grid.overlaps for a in grid.attacks if o in (a.only.overlaps or (o,))}
    blind = [u for u in plan.of_kind("blind") if u.meta.setting != "lira_protocol"]
    assert {(u.meta.setting, u.meta.dataset) for u in blind} == {(s.kind, s.dataset) for s in grid.settings}


def test_every_cell_is_planned_once(default_plan):
    _, plan = default_plan
    cells = plan.of_kind("cell")
    assert len({dataclasses.astuple(u.meta) for u in cells}) == len(cells)


def test_dependencies_point_to_planned_units_of_the_previous_stage(default_plan):
    _, plan = default_plan
    previous = {"release": {"model"}, "fit": {"release"}, "cell": {"fit", "release", "model"}, "model": {"model"},
                "blind": set(), "protocol": {"fit", "release"}, "audit": {"model", "release"}}
    for unit in plan.units.values():
        assert {plan.units[d].kind for d in unit.deps} <= previous[unit.kind]
    order = {u.key: i for i, u in enumerate(plan.topological())}
    assert all(order[d] < order[u.key] for u in plan.units.values() for d in u.deps)


def test_keys_are_stable_and_sensitive_to_inputs(tmp_path):
    grid = load_grid("smoke")
    keys = set(_plan(grid, tmp_path).units)
    assert keys == set(_plan(grid, tmp_path).units)
    longer = dataclasses.replace(grid, train={**grid.train, "epochs": grid.train["epochs"] + 1})
    changed = _plan(longer, tmp_path)
    assert not {u.key for u in changed.of_kind("model")} & keys  # every model retrains when its recipe changes
    reseeded = _plan(dataclasses.replace(grid, seeds=(1,)), tmp_path)
    assert not set(reseeded.units) & keys


def test_placebo_victim_never_trains_on_queried_images(default_plan):
    _, plan = default_plan
    for cell in plan.of_kind("cell"):
        release = plan.units[cell.config.release]
        model = plan.units[release.config.model]
        queried = set(release.config.members) | set(release.config.nonmembers)
        trained = set(model.config.train_ids)
        if cell.meta.control == "placebo":
            assert not trained & queried
        else:
            assert trained == set(release.config.members) and not trained & set(release.config.nonmembers)


def test_manifests_are_written_next_to_their_digest(tmp_path):
    grid = load_grid("smoke")
    manifests = make_manifests(grid, _sources(), ResultStore(tmp_path))
    written = sorted((tmp_path / "splits").glob("*.json"))
    assert len(written) == len(manifests) == 2  # the overlap's manifest and the placebo one
    for manifest in manifests.values():
        assert (tmp_path / "splits" / f"{manifest.digest()[:16]}.json").read_text() == manifest.to_json()


def test_only_restricts_an_entry_to_some_archs_overlaps_settings_and_controls(tmp_path):
    grid = load_grid("extended")
    base = dataclasses.replace(grid, defenses=grid.defenses[:1], attacks=grid.attacks[-1:])
    from ray_jobs.grid.entries import DefenseSetting, Only

    dp = DefenseSetting("dp_sgd", (("max_grad_norm", 1.0), ("noise_multiplier", 1.0)),
                        Only(victim_archs=(grid.victim_archs[0],), overlaps=(0.0,), settings=("dependent",),
                             controls=("none",)))
    plan = _plan(dataclasses.replace(base, defenses=base.defenses + (dp,)), tmp_path)
    dp_cells = [c for c in plan.of_kind("cell") if c.meta.defense == "dp_sgd"]
    assert dp_cells and {(c.meta.victim_arch, c.meta.shadow_overlap, c.meta.setting, c.meta.control)
                         for c in dp_cells} == {(grid.victim_archs[0], 0.0, "dependent", "none")}


def test_an_attack_can_be_restricted_to_some_defenses(tmp_path):
    grid = load_grid("extended")
    plan = _plan(grid, tmp_path)
    concat = {(c.meta.defense, c.meta.setting) for c in plan.of_kind("cell") if c.meta.attack_label == "patch/concat"}
    assert concat == {("none", "dependent")}
    with pytest.raises(Exception, match="only an attack entry can name"):
        from ray_jobs.grid.spec import validate

        raw = {"name": "x", "datasets": {"cityscapes": {"root": "synthetic"}}, "settings": [{"dataset": "cityscapes"}],
               "victim_archs": ["pspnet_tiny"], "attacks": ["loss_threshold"], "train": {"epochs": 1, "batch_size": 2, "lr": 0.1},
               "defenses": [{"name": "argmax", "only": {"defenses": ["none"]}}]}
        validate(raw, "x.yaml")


def test_the_default_profile_trains_several_placebo_victims_per_untrained_recipe(tmp_path):
    """`placebo_models: 3`: three placebo victims (training seeds) per setting for the recipes without a
    training-side defense, each with its own cells; a trained defense's placebo stays one model."""
    grid = load_grid("default")
    plan = _plan(grid, tmp_path)
    placebos = [u for u in plan.of_kind("model") if u.meta.role == "victim" and u.meta.placebo]
    untrained = [u for u in placebos if u.config.defense["name"] == "none"]
    assert grid.placebo_models == 3 and len(untrained) == 3 * len(grid.settings)
    assert len({u.config.seed for u in untrained}) == 3
    for setting in ("dependent", "independent"):
        models = {u.config.train_ids == v.config.train_ids for u in untrained for v in untrained
                  if u.meta.setting == v.meta.setting == setting}
        assert models == {True}  # the same placebo training set, three training draws
    assert all(sum(u.config.defense["name"] == d for u in placebos) == 1 for d in ("dp_sgd", "relaxloss"))
    cells = [c for c in plan.of_kind("cell") if c.meta.control == "placebo" and c.meta.defense == "gaussian"]
    assert {c.meta.placebo_model for c in cells} == {0, 1, 2}
    assert len({c.config.victim_model for c in cells if c.meta.setting == "independent"}) == 3
