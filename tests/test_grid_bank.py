"""Reference banks in the plan: offline references never train on a victim query image, a bank grows without
retraining, references are adaptive, RMIA gets the victim's population outputs, the LiRA protocol and its
null checks are planned, and bad grid entries fail on load with the key named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from test_grid_plan import _plan  # the plan of a grid on an index of fake ids

from benchmark.errors import SegleakError
from ray_jobs.grid.bank import OFFLINE, ONLINE, reference_subset, subset_size
from ray_jobs.grid.spec import PROFILES_DIR, load_grid

REFERENCE_ATTACKS = [
    {"name": "lira", "variant": ["offline", "online"], "tune": {"variance": ["global", "per_example"]}},
    {"name": "dense_lira"},
    {"name": "rmia", "tune": {"a": [0.0, 0.5, 1.0]}},
    {"name": "calibrated_loss"},
]


def grid_file(tmp_path: Path, count: int = 8, protocol: bool = True, **changes) -> Path:
    raw = yaml.safe_load((PROFILES_DIR / "default.yaml").read_text())
    only = {"victim_archs": ["pspnet_tiny"], "overlaps": [0.0], "settings": ["dependent"],
            "defenses": ["none", "argmax", "gaussian", "dp_sgd(max_grad_norm=1, noise_multiplier=1)"]}
    raw.update(references={"count": count}, lira_protocol=protocol,
               attacks=[{"name": "patch", "representation": "slm"}] + [{**a, "only": only} for a in REFERENCE_ATTACKS])
    raw.update(changes)
    path = tmp_path / f"grid-{count}-{protocol}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def planned(tmp_path):
    grid = load_grid(grid_file=grid_file(tmp_path))
    return grid, _plan(grid, tmp_path)


def references(plan, bank: str | None = None):
    return [u for u in plan.of_kind("model")
            if u.meta and u.meta.role == "reference" and not u.meta.placebo and bank in (None, u.meta.bank)]


def test_offline_references_never_train_on_a_victim_query_image(planned):
    _, plan = planned
    for fit in plan.of_kind("fit"):
        if not fit.config.references:
            continue
        models = [plan.units[plan.units[r].config.model] for r in fit.config.references]
        online = models[0].meta.bank == ONLINE
        for cell in (c for c in plan.of_kind("cell") if c.config.fit == fit.key):
            victim = plan.units[cell.config.release].config
            queried = set(victim.members) | set(victim.nonmembers)
            trained = set().union(*(m.config.train_ids for m in models))
            assert online or not trained & queried
            assert not online or trained & queried  # online references train on halves of the query set too
            assert set(fit.config.queries) == (set() if online else queried)  # what the fit unit re-checks


def test_each_reference_records_its_mask_and_is_released_on_every_image_the_attacks_read(planned):
    _, plan = planned
    for fit in (f for f in plan.of_kind("fit") if f.config.references):
        assert len(fit.config.references) == 8
        for key in fit.config.references:
            release = plan.units[key].config
            model = plan.units[release.model].config
            assert release.members == model.train_ids  # the mask, as the release records it
            assert set(fit.config.pool) <= set(release.members) | set(release.nonmembers)
            assert set(model.train_ids) <= set(fit.config.pool)


def test_a_bank_of_16_reuses_the_8_of_a_bank_of_8(tmp_path):
    small = _plan(load_grid(grid_file=grid_file(tmp_path, 8)), tmp_path / "8")
    large = _plan(load_grid(grid_file=grid_file(tmp_path, 16)), tmp_path / "16")
    for bank in (OFFLINE, ONLINE):
        first = {u.key for u in references(small, bank)}
        second = {u.key for u in references(large, bank)}
        assert first < second and len(second) == 2 * len(first)
    releases_8 = {k for f in small.of_kind("fit") for k in f.config.references}
    releases_16 = {k for f in large.of_kind("fit") for k in f.config.references}
    assert releases_8 < releases_16


def test_references_are_adaptive_and_output_defenses_share_a_bank(planned):
    _, plan = planned
    by_defense: dict[str, set[str]] = {}
    for cell in plan.of_kind("cell"):
        fit = plan.units[cell.config.fit]
        if not fit.config.references:
            continue
        victim = plan.units[cell.config.victim_model].config
        models = {plan.units[plan.units[r].config.model].config.defense["name"] for r in fit.config.references}
        assert models == {victim.defense["name"]}  # trained with the victim's training defense
        assert fit.config.output_defense == cell.config.output_defense  # outputs through its output defense
        by_defense.setdefault(cell.meta.defense, set()).update(fit.config.references)
    assert by_defense["argmax"] == by_defense["gaussian"] == by_defense["none"]
    assert not by_defense["dp_sgd"] & by_defense["none"]
    # 2 banks of 8 for `none` (shared by the output defenses) and 2 for dp_sgd
    assert len(references(plan)) == 32


def test_rmia_cells_read_the_victims_outputs_on_the_attackers_population(planned):
    _, plan = planned
    for cell in plan.of_kind("cell"):
        needs = cell.meta.attack == "rmia"
        assert (cell.config.population is not None) == needs
        if needs:
            population = plan.units[cell.config.population].config
            fit = plan.units[cell.config.fit].config
            assert population.model == cell.config.victim_model
            assert sorted(population.members + population.nonmembers) == sorted(fit.population)
            assert cell.config.population in cell.deps


def test_reference_attacks_run_only_where_restricted_and_with_the_placebo(planned):
    _, plan = planned
    cells = [c for c in plan.of_kind("cell") if c.meta.attack in {"lira", "dense_lira", "rmia", "calibrated_loss"}]
    assert {c.meta.defense for c in cells} == {"none", "argmax", "gaussian", "dp_sgd"}
    assert {(c.meta.victim_arch, c.meta.shadow_overlap, c.meta.setting) for c in cells} == {("pspnet_tiny", 0.0, "dependent")}
    assert {c.meta.control for c in cells} == {"none", "placebo"}
    placebo = [c for c in cells if c.meta.control == "placebo"]
    normal = {(c.meta.attack_label, c.meta.defense_label): c.config.fit for c in cells if c.meta.control == "none"}
    for cell in placebo:  # the placebo victim is scored with the same bank, never one that saw its queries
        assert normal[(cell.meta.attack_label, cell.meta.defense_label)] == cell.config.fit


def test_the_lira_protocol_pools_the_online_bank_with_its_null_checks(planned):
    _, plan = planned
    units = plan.of_kind("protocol")
    labels = {c.meta.attack_label for c in plan.of_kind("cell") if c.meta.attack in {"lira", "dense_lira", "rmia", "calibrated_loss"}}
    assert {(u.meta.attack_label, u.meta.control) for u in units} == {(a, c) for a in labels for c in ("none", "placebo")}
    for unit in units:
        fit = plan.units[unit.config.fit]
        assert {plan.units[plan.units[r].config.model].meta.bank for r in fit.config.references} == {ONLINE}
        assert fit.config.queries == [] and unit.meta.setting == "lira_protocol"
    blind = [u for u in plan.of_kind("blind") if u.meta.setting == "lira_protocol"]
    assert len(blind) == 1 and not set(blind[0].config.members) & set(blind[0].config.nonmembers)
    scored = set(blind[0].config.members) | set(blind[0].config.nonmembers)
    fitted = set(blind[0].config.shadow_members) | set(blind[0].config.shadow_nonmembers)
    assert not scored & fitted and scored | fitted == set(plan.units[units[0].config.fit].config.pool)
    for unit in (u for u in units if u.meta.control == "placebo"):  # placebo models: fresh subsets, in no bank
        fit = plan.units[unit.config.fit].config
        assert unit.config.placebo and len(unit.config.placebos) == 2 and set(unit.config.placebos) <= set(unit.deps)
        assert not set(unit.config.placebos) & set(fit.references)
        subsets = [plan.units[plan.units[r].config.model].config.train_ids for r in fit.references + unit.config.placebos]
        assert len({tuple(s) for s in subsets}) == len(subsets) and all(set(s) <= set(fit.pool) for s in subsets)
        sizes = {len(s) for s in subsets}
        assert max(sizes) - min(sizes) <= 2  # the placebo models train on as many images as the references
        for key in unit.config.placebos:
            release = plan.units[key].config
            assert plan.units[release.model].meta.placebo and set(fit.pool) <= set(release.members) | set(release.nonmembers)
    online_lira = [u for u in units if u.meta.attack_label == "lira/online"]
    victim_fits = {c.config.fit for c in plan.of_kind("cell") if c.meta.attack_label == "lira/online"}
    assert {u.config.fit for u in online_lira} <= victim_fits  # the online fit is shared, not recomputed


def test_reference_subsets_are_seeded_sized_and_whole_groups():
    pool = [f"img{i:03d}" for i in range(40)]
    groups = {i: f"g{int(i[3:]) // 2}" for i in pool}
    first = reference_subset(pool, 10, 0, OFFLINE, 3, groups.__getitem__)
    assert first == reference_subset(list(reversed(pool)), 10, 0, OFFLINE, 3, groups.__getitem__)
    assert len(first) == 10 and first != reference_subset(pool, 10, 0, OFFLINE, 4, groups.__getitem__)
    assert first != reference_subset(pool, 10, 0, ONLINE, 3, groups.__getitem__)
    assert all(f"img{2 * (int(i[3:]) // 2):03d}" in first and f"img{2 * (int(i[3:]) // 2) + 1:03d}" in first for i in first)
    assert subset_size(80, 48) == 40 and subset_size(228, 48) == 48
    with pytest.raises(SegleakError, match="at least 2 images"):
        subset_size(1, 48)


def test_grid_refuses_bad_reference_entries(tmp_path):
    with pytest.raises(SegleakError, match=r"attacks\[1\]\.tune: unknown key 'groups' \(tunable: rank\)"):
        load_grid(grid_file=grid_file(tmp_path, attacks=[{"name": "patch"}, {"name": "dense_lira", "tune": {"groups": ["class"]}}]))
    with pytest.raises(SegleakError, match=r"attacks\[0\]\.tune\.a\[1\]: value 2.0 is outside"):
        load_grid(grid_file=grid_file(tmp_path, attacks=[{"name": "rmia", "tune": {"a": [0.5, 2.0]}}]))
    with pytest.raises(SegleakError, match="dependent setting only"):
        load_grid(grid_file=grid_file(tmp_path, attacks=[{"name": "calibrated_loss"}]))
    with pytest.raises(SegleakError, match=r"only.defenses: unknown defense 'nothing'"):
        load_grid(grid_file=grid_file(tmp_path, attacks=[{"name": "patch", "only": {"defenses": ["nothing"]}}]))
    with pytest.raises(SegleakError, match=r"references.count: value 1 is outside"):
        load_grid(grid_file=grid_file(tmp_path, references={"count": 1}))
    with pytest.raises(SegleakError, match=r"attacks\[0\]\.tune\.crop: is also set"):
        load_grid(grid_file=grid_file(tmp_path, attacks=[{"name": "patch", "crop": 8, "tune": {"crop": [8]}}]))
    grid = load_grid(grid_file=grid_file(tmp_path, attacks=[{"name": "patch", "tune": {"crop": [8, 12], "epochs": 4}}]))
    assert grid.attacks[0].to_json()["tune"] == {"crop": [8, 12], "epochs": [4]}
    grid = load_grid(grid_file=grid_file(tmp_path))
    assert dataclasses.replace(grid).attacks[1].to_json()["tune"] == {"variance": ["global", "per_example"]}


def test_only_defenses_names_one_defense_setting_by_its_label(tmp_path):
    only = {"overlaps": [0.0], "settings": ["dependent"], "defenses": ["dp_sgd(max_grad_norm=1, noise_multiplier=1)"]}
    path = grid_file(tmp_path, attacks=[{"name": "calibrated_loss", "only": only}],
                     defenses=["none", {"name": "dp_sgd", "noise_multiplier": [0.0, 1.0], "max_grad_norm": 1.0}])
    plan = _plan(load_grid(grid_file=path), tmp_path)
    assert {c.meta.defense_label for c in plan.of_kind("cell")} == {"dp_sgd(max_grad_norm=1, noise_multiplier=1)"}
    with pytest.raises(SegleakError, match="unknown defense 'dp'"):
        load_grid(grid_file=grid_file(tmp_path, attacks=[{"name": "patch", "only": {"defenses": ["dp(sigma=1)"]}}]))
