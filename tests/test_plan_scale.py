"""The plan and the driver at scale: unit keys do not change when their configs stop being deep-copied (every
finished unit of an earlier version stays reusable), Ray gets the same arguments, and a no-op plan has the
paper grid's shape (what `make bench` measures the driver's cost per unit on)."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass

import pytest

from ray_jobs.grid.plan import build_plan
from ray_jobs.grid.sources import make_manifests
from ray_jobs.grid.spec import load_grid
from ray_jobs.measure.perf import driver
from ray_jobs.measure.perf.planning import fake_sources
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.base import PLAN_VERSION, code_versions, config_json, unit_key


def _key_before(kind: str, config) -> str:
    """How a key was computed before (dataclasses.asdict): the keys of existing results stores. Components at a
    version above 1 add their versions (`code_versions`), which is what recomputes what they made."""
    content = {"kind": kind, "version": PLAN_VERSION, "config": asdict(config)}
    if versions := code_versions(kind, config):
        content["code"] = versions
    blob = json.dumps(content, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_keys_and_task_arguments_are_those_of_deep_copied_configs(profile, tmp_path):
    grid = load_grid(profile)
    sources = fake_sources(grid)
    plan = build_plan(grid, sources, make_manifests(grid, sources, ResultStore(tmp_path), stream=io.StringIO()))
    assert {"model", "release", "fit", "cell", "blind"} <= set(Counter(u.kind for u in plan.units.values()))
    for unit in plan.units.values():
        assert unit.key == _key_before(unit.kind, unit.config) == unit_key(unit.kind, unit.config)
        assert unit.config_dict == asdict(unit.config)


def test_config_json_turns_a_nested_dataclass_into_a_dict_as_asdict_does():
    from ray_jobs.units.kinds.noop import NoopConfig, NoopMeta

    @dataclass(frozen=True)
    class Outer:
        inner: NoopMeta
        ids: list[str]

    config = Outer(NoopMeta(logs=True), ["a", "b"])
    assert config_json(config) == asdict(config) == {"inner": {"logs": True}, "ids": ["a", "b"]}
    assert config_json(config)["ids"] is config.ids  # not copied
    assert unit_key("noop", NoopConfig("cell", 1, ["a"])) == _key_before("noop", NoopConfig("cell", 1, ["a"]))


def test_the_noop_plan_has_the_paper_grids_shape():
    plan = driver.noop_plan(260)
    roles = Counter(u.config.role for u in plan.units.values())
    assert len(plan.units) == 260 and roles == {"model": 20, "release": 20, "fit": 80, "cell": 140}
    runs = sum(u.meta.logs for u in plan.units.values())
    assert runs == 160 and abs(runs / 260 - 12360 / 19920) < 0.01  # the paper profile's runs per unit
    order = {u.key: i for i, u in enumerate(plan.topological())}
    for unit in plan.units.values():
        assert all(order[d] < order[unit.key] for d in unit.deps)
        deps = sorted(plan.units[d].config.role for d in unit.deps)
        assert deps == {"model": [], "release": ["model"], "fit": ["release"],
                        "cell": ["fit", "model", "release"]}[unit.config.role]
        assert len(unit.config.ids) == driver.BLOCK[unit.config.role][1]


@pytest.mark.slow
def test_a_noop_plan_runs_through_the_real_scheduler_store_ledger_and_mlflow(tmp_path):
    import ray
    from mlflow.tracking import MlflowClient

    from ray_jobs.running.runner import init_ray

    init_ray(None, 2, ResultStore(tmp_path))
    try:
        result = driver.run_plan(52, tmp_path, drain_limit_s=300)
    finally:
        ray.shutdown()
    assert result["units"] == 52 and result["failed"] == 0 and result["drained"]
    assert result["driver_ms_per_unit"] > 0 and result["units_per_s"] > 0
    store = ResultStore(tmp_path / "results")
    plan = driver.noop_plan(52)
    assert all(store.is_done("noop", key) for key in plan.units)
    assert Counter(e["key"] for e in store.ledger()) == Counter(list(plan.units))  # each computed once
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "segleak-bench-driver"]
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`segleak.kind` = 'bench-noop'")
    logged = {r.data.tags["segleak.unit"] for r in runs}
    assert logged == {u.key for u in plan.units.values() if u.meta.logs} and len(runs) == result["runs"] == 32
