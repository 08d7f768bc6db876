"""Defenses that need a teacher or a reference set: the grid refuses a missing reference set on load, and the
plan hands each model its own role's undefended teacher and its own role's reference pool, outside every
query set, for the victim, the placebo victim and the adaptive attacker's shadow alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.data.splits import ImageIndex
from benchmark.errors import SegleakError
from ray_jobs.grid.plan import build_plan
from ray_jobs.grid.sources import DataSource, make_manifests
from ray_jobs.grid.spec import PROFILES_DIR, load_grid
from ray_jobs.recording.store import ResultStore

REFERENCE_DEFENSES = [{"name": "distillation", "temperature": 2.0}, {"name": "adv_reg", "weight": 1.0}]


def _grid_file(tmp_path: Path, reference: int, defenses: list | None = None) -> Path:
    raw = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    raw["defenses"] = ["none", *(defenses or REFERENCE_DEFENSES), {"name": "relaxloss", "alpha": 1.0}]
    raw["splits"]["dependent"]["reference"] = reference
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("defense", REFERENCE_DEFENSES)
def test_a_defense_that_needs_a_reference_set_is_refused_without_one(tmp_path, defense):
    with pytest.raises(SegleakError) as err:
        load_grid(grid_file=_grid_file(tmp_path, 0, [defense]))
    assert "splits.dependent.reference" in str(err.value) and defense["name"] in str(err.value)
    assert "grid.yaml" in str(err.value)


def test_an_entry_restricted_to_another_setting_needs_no_reference_set_here(tmp_path):
    only = {**REFERENCE_DEFENSES[1], "only": {"settings": ["independent"]}}
    assert load_grid(grid_file=_grid_file(tmp_path, 0, [only]))


def test_each_model_gets_its_roles_teacher_and_reference_pool(tmp_path):
    grid = load_grid(grid_file=_grid_file(tmp_path, 4))
    index = ImageIndex("cityscapes", {"train": tuple(f"train/c_{i:03d}" for i in range(120))})
    sources = {"cityscapes": DataSource("cityscapes", {"type": "cityscapes"}, "/data", index)}
    manifests = make_manifests(grid, sources, ResultStore(tmp_path / "store"))
    plan = build_plan(grid, sources, manifests)
    models = plan.of_kind("model")
    checked = set()
    for unit in models:
        defense, role, placebo = unit.config.defense["name"], unit.meta.role, unit.meta.placebo
        manifest = next(m for m in manifests.values() if m.placebo == (placebo and role == "victim"))
        if defense == "relaxloss" or defense == "none":
            assert unit.config.reference_ids == [] and unit.config.teacher is None
            continue
        reference = set(unit.config.reference_ids)
        assert reference == set(manifest.pool(f"{role}_reference")) and len(reference) == 4
        queried = manifest.victim.queried | manifest.shadow.queried
        assert not reference & queried and not reference & set(unit.config.train_ids)
        if defense == "distillation":
            teacher = plan.units[unit.config.teacher]
            assert unit.deps == (teacher.key,) and teacher.config.defense["name"] == "none"
            assert (teacher.meta.role, teacher.meta.placebo, teacher.config.train_ids) == (role, placebo, unit.config.train_ids)
        else:
            assert unit.config.teacher is None
        checked.add((defense, role, placebo))
    assert checked == {(d, r, p) for d in ("distillation", "adv_reg") for r, p in
                       (("victim", False), ("victim", True), ("shadow", False))}
