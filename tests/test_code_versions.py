"""A cached result must not outlive the code that made it: a component's version enters the keys of the units it
shapes, so bumping one attack's version recomputes its fits and the cells (and protocol cells) reading them, and
nothing else; a dataset adapter's or defense's bump reaches the models trained on it; versions at the baseline 1
leave every key as it was (tests/test_plan_scale.py compares them with the keys of existing stores)."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import sys
from pathlib import Path

import pytest

from benchmark.registry import ATTACKS, DATASETS, DEFENSES
from ray_jobs.grid.plan import build_plan
from ray_jobs.grid.sources import make_manifests
from ray_jobs.grid.spec import load_grid
from ray_jobs.measure.perf.planning import fake_sources
from ray_jobs.recording.store import ResultStore
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
    monkeypatch.setattr(DEFENSES.lookup("dp_sgd"), "version", DEFENSES.lookup("dp_sgd").version + 1)
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


LOCK = Path(__file__).with_name("component_versions.json")


def _components() -> dict[str, dict[str, object]]:
    """Each registered component's version and the hash of the file that defines it."""
    out = {}
    for registry in (ATTACKS, DEFENSES, DATASETS, UNIT_KINDS):
        for name in registry.names():
            cls = registry.lookup(name)
            source = Path(inspect.getsourcefile(cls)).read_bytes()
            out[f"{registry.name} {name}"] = {"version": cls.version, "source": hashlib.sha256(source).hexdigest()[:16]}
    return out


def test_a_component_whose_file_changed_says_whether_its_results_change():
    """The guard on the versions themselves: an edited component file with an unchanged version fails here until
    its author either bumps `version` (results change: they are recomputed) or records that they do not, by
    refreshing the lock (`SEGLEAK_REFRESH_VERSIONS=1 pytest tests/test_code_versions.py`). It sees the file that
    defines a component, not the shared modules it calls: a change there needs the same decision by hand."""
    now = _components()
    if os.environ.get("SEGLEAK_REFRESH_VERSIONS"):
        LOCK.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    locked = json.loads(LOCK.read_text())
    stale = [name for name, entry in now.items() if name in locked and entry["source"] != locked[name]["source"]
             and entry["version"] == locked[name]["version"]]
    assert not stale, (f"{', '.join(stale)}: code changed at the same version; bump `version` if results change, "
                       "else refresh tests/component_versions.json (SEGLEAK_REFRESH_VERSIONS=1)")
    assert set(now) == set(locked), "a component was added or removed: refresh tests/component_versions.json"


def test_the_lock_guard_fails_on_an_edit_without_a_bump(monkeypatch):
    """Mutation test of the guard: a component file edited at the same version is named."""
    locked = json.loads(LOCK.read_text())
    locked["attack loss_threshold"]["source"] = "0" * 16
    monkeypatch.setattr(sys.modules[__name__], "LOCK", _Fake(json.dumps(locked)))
    with pytest.raises(AssertionError, match="attack loss_threshold: code changed"):
        test_a_component_whose_file_changed_says_whether_its_results_change()


class _Fake:
    def __init__(self, text: str) -> None:
        self.text = text

    def read_text(self) -> str:
        return self.text
