"""A cached result must not outlive the code that made it: a component's version enters the keys of the units it
shapes, so bumping one attack's version recomputes its fits and the cells (and protocol cells) reading them, and
nothing else; a dataset adapter's or defense's bump reaches the models trained on it; versions at the baseline 1
leave every key as it was (tests/test_plan_scale.py compares them with the keys of existing stores)."""

from __future__ import annotations

import io

import pytest

from benchmark.registry import ATTACKS, DATASETS, DEFENSES
from ray_jobs.perf.planning import fake_sources
from ray_jobs.plan import build_plan
from ray_jobs.sources import make_manifests
from ray_jobs.spec import load_grid
from ray_jobs.store import ResultStore
from ray_jobs.units.base import UNIT_KINDS


def _plan(tmp_path):
    grid = load_grid("default")
    sources = fake_sources(grid)
    return build_plan(grid, sources, make_manifests(grid, sources, ResultStore(tmp_path), stream=io.StringIO()))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _plan(tmp_path_factory.mktemp("before"))


def test_bumping_an_attack_recomputes_its_fits_and_cells_and_nothing_else(baseline, tmp_path, monkeypatch):
    monkeypatch.setattr(ATTACKS.lookup("loss_threshold"), "version", 2)
    after = _plan(tmp_path)
    changed_keys = set(baseline.units) - set(after.units)
    assert changed_keys, "bumping loss_threshold's version changed no key: its cached results would be reused"
    changed = [baseline.units[k] for k in changed_keys]
    assert {u.kind for u in changed} <= {"fit", "cell", "protocol"}
    fits = [u for u in changed if u.kind == "fit"]
    assert fits and all(u.config.attack["name"] == "loss_threshold" for u in fits)
    untouched_fits = [u for u in baseline.units.values() if u.kind == "fit" and u.key not in changed_keys]
    assert all(u.config.attack["name"] != "loss_threshold" for u in untouched_fits)
    # every cell reading a changed fit changed, and no other
    cells = [u for u in baseline.units.values() if u.kind == "cell"]
    assert {u.key for u in cells if u.config.fit in changed_keys} == {u.key for u in changed if u.kind == "cell"}
    assert len(after.units) == len(baseline.units)


def test_bumping_a_dataset_adapter_or_a_training_defense_reaches_its_models(baseline, tmp_path, monkeypatch):
    name = next(u.config.dataset["type"] for u in baseline.units.values() if u.kind == "model")
    monkeypatch.setattr(DATASETS.lookup(name), "version", 3)
    monkeypatch.setattr(DEFENSES.lookup("dp_sgd"), "version", 2)
    after = _plan(tmp_path)
    models = [u for u in baseline.units.values() if u.kind == "model"]
    for unit in models:
        shaped = unit.config.dataset["type"] == name or unit.config.defense["name"] == "dp_sgd"
        assert (unit.key not in after.units) == shaped, unit.label


def test_bumping_a_unit_kind_recomputes_its_units(baseline, tmp_path, monkeypatch):
    monkeypatch.setattr(UNIT_KINDS.lookup("blind"), "version", 2)
    after = _plan(tmp_path)
    gone = {baseline.units[k].kind for k in set(baseline.units) - set(after.units)}
    assert gone == {"blind"}
