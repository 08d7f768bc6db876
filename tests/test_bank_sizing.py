"""Reference banks sized like the victim (validity issue, sections 5 and 8): every reference trains on as many
images as the victim, every image of a bank's pool is IN with probability 1/2, a plan that cannot do this says
so before it runs, and every training defense of the default and extended profiles faces the reference attacks
with a bank trained under that defense."""

from __future__ import annotations


import pytest
import yaml
from test_grid_plan import _plan

from benchmark.errors import SegleakError
from benchmark.needs import REFERENCES
from ray_jobs.grid.bank import OFFLINE, ONLINE
from ray_jobs.grid.spec import PROFILES_DIR, load_grid


def _banks(plan):
    """fit unit -> the reference models it reads."""
    return {fit.key: [plan.units[plan.units[r].config.model] for r in fit.config.references]
            for fit in plan.of_kind("fit") if fit.config.references}


@pytest.fixture(scope="module", params=["default", "extended"])
def profile_plan(request, tmp_path_factory):
    grid = load_grid(request.param)
    return grid, _plan(grid, tmp_path_factory.mktemp(request.param))


def test_every_reference_trains_on_the_victims_training_size_and_images_are_in_at_one_half(profile_plan):
    grid, plan = profile_plan
    assert plan.notes == []
    victim_train = grid.split_spec(grid.settings[0]).victim_members
    for fit_key, models in _banks(plan).items():
        fit = plan.units[fit_key].config
        assert {len(m.config.train_ids) for m in models} == {victim_train}, fit_key
        assert len(fit.pool) == 2 * victim_train
        in_count = {i: sum(i in set(m.config.train_ids) for m in models) for i in fit.pool}
        assert sum(in_count.values()) / (len(models) * len(fit.pool)) == pytest.approx(0.5, abs=0.02)
        if models[0].meta.bank == ONLINE:  # query images without an IN (or an OUT) reference: chance only, 2/2^8
            lacking = sum(not 0 < n < len(models) for n in in_count.values()) / len(in_count)
            assert lacking < 0.03, lacking


def test_every_training_defense_faces_the_reference_attacks_with_a_bank_trained_under_it(profile_plan):
    grid, plan = profile_plan
    banks = _banks(plan)
    for defense in (d for d in grid.defenses if not d.output_side):
        cells = [c for c in plan.of_kind("cell") if c.meta.defense_label == defense.label and c.meta.control == "none"
                 and c.meta.shadow_overlap == 0.0]
        reference_cells = [c for c in cells if grid_attack(grid, c.meta).attack.requirements() >= {REFERENCES}]
        assert reference_cells, defense.label
        for cell in reference_cells:
            assert {m.meta.train_defense for m in banks[cell.config.fit]} == {defense.label}


def grid_attack(grid, meta):
    return next(a for a in grid.attacks if a.label == meta.attack_label)


def test_a_pool_below_twice_the_victim_is_said_before_the_run(tmp_path):
    raw = yaml.safe_load((PROFILES_DIR / "default.yaml").read_text())
    raw["splits"]["dependent"].update(shadow_nonmembers=32, victim_nonmembers=100)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(raw))
    plan = _plan(load_grid(grid_file=path), tmp_path)
    assert any("offline references train on 32 images, the victim on 48" in n for n in plan.notes), plan.notes
    assert any("online bank's IN rate is 0.32" in n for n in plan.notes), plan.notes
    models = {len(m.config.train_ids) for ms in _banks(plan).values() for m in ms if m.meta.bank == OFFLINE}
    assert models == {32}


def test_smaller_banks_by_defense_and_the_protocol_where_asked(tmp_path):
    plan = _plan(load_grid("default"), tmp_path)
    sizes = {models[0].meta.train_defense.split("(")[0]: len(models) for models in _banks(plan).values()}
    assert sizes == {"none": 8, "dp_sgd": 8, "distillation": 4, "adv_reg": 4, "relaxloss": 4}  # output defenses: none's
    protocol_defenses = {u.meta.defense for u in plan.of_kind("protocol")}
    assert protocol_defenses == {"none", "argmax", "gaussian", "dp_sgd"}


@pytest.mark.parametrize("references, message", [
    ({"count": 8, "by_defense": {"gaussian": 4}}, "references.by_defense.gaussian: not a training defense"),
    ({"count": 8, "by_defense": {"distillation": 2}}, "references.by_defense.distillation: value 2 is outside"),
])
def test_bad_bank_sizes_are_one_line_naming_the_key(tmp_path, references, message):
    raw = yaml.safe_load((PROFILES_DIR / "default.yaml").read_text())
    raw["references"] = references
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SegleakError, match=message):
        load_grid(grid_file=path)
