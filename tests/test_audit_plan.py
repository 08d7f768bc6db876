"""The grid's `audit` block: validation with the key named, and the plan's audit units on the default
profile (which models each audit reads, what they train on, which units they share with the grid)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from test_audit_pipeline import GRID
from test_grid_plan import _plan

from benchmark.errors import SegleakError
from ray_jobs.grid.spec import load_grid


def _grid(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**GRID, **changes}))
    return path


def test_default_profile_audits_the_undefended_victim_and_two_dp_epsilons(tmp_path):
    grid = load_grid("extended")
    plan = _plan(grid, tmp_path)
    audits = plan.of_kind("audit")
    labels = ["none", "dp_sgd(max_grad_norm=1, target_epsilon=2)", "dp_sgd(max_grad_norm=1, target_epsilon=8)"]
    assert sorted((u.meta.defense_label, u.meta.control) for u in audits) == sorted(
        (label, control) for label in labels for control in ("none", "placebo"))
    victims = {(u.meta.setting, u.config.arch, u.config.defense["name"], u.meta.placebo): u.key
               for u in plan.of_kind("model") if u.meta.role == "victim"}
    for unit in audits:
        assert unit.meta.setting == "independent" and unit.meta.arch == "pspnet_tiny"
        canaries = {i for ids in unit.config.canaries.values() for i in ids}
        assert len(canaries) == 96 and {len(v) for v in unit.config.canaries.values()} == {48}
        model = plan.units[unit.config.model]
        assert model.meta.role == "audit" and model.meta.placebo == (unit.meta.control == "placebo")
        if unit.meta.defense == "dp_sgd":  # `reference: grid` and no DP victim in the grid: no calibrated score
            assert unit.config.reference is None and unit.config.scores == ["loss"]
        else:  # the grid's own undefended victim (no extra training), which never saw a canary
            reference = plan.units[plan.units[unit.config.reference].deps[0]]
            assert reference.key == victims[("independent", "pspnet_tiny", "none", False)]
            assert not set(reference.config.train_ids) & canaries
        if unit.meta.control == "placebo":
            continue
        assert set(model.config.heldout_ids).isdisjoint(canaries)
        victim = plan.units[victims[("independent", "pspnet_tiny", "none", False)]]  # members do not depend on the defense
        assert set(model.config.train_ids) - canaries == set(victim.config.train_ids)
    # the grid's cells are untouched by the audit (same units with and without it)
    without = _plan(dataclasses.replace(grid, audit=None), tmp_path)
    assert {u.key for u in without.units.values() if u.kind == "cell"} == {u.key for u in plan.of_kind("cell")}
    assert {u.key for u in plan.of_kind("model")} - {u.key for u in without.of_kind("model")} == {
        u.config.model for u in audits}  # only the three audit models and their three placebos are new


def test_same_defense_references_train_a_reference_per_dp_epsilon(tmp_path):
    grid = load_grid("extended")
    grid = dataclasses.replace(grid, audit=dataclasses.replace(grid.audit, reference="same_defense"))
    plan = _plan(grid, tmp_path)
    audited = {plan.units[plan.units[u.config.reference].deps[0]].key for u in plan.of_kind("audit") if u.config.reference}
    references = [u for u in plan.of_kind("model") if u.meta.role == "reference" and u.key in audited]
    assert sorted(u.config.defense["params"]["target_epsilon"] for u in references) == [2.0, 8.0]
    for unit in plan.of_kind("audit"):
        reference = plan.units[plan.units[unit.config.reference].deps[0]]
        if unit.meta.control == "none":
            assert reference.config.defense == plan.units[unit.config.model].config.defense
            assert reference.config.seed != plan.units[unit.config.model].config.seed
def test_bad_audit_blocks_are_refused(tmp_path):
    cases = [
        ({"audit": {"defenses": ["argmax"]}}, "argmax is an output defense"),
        ({"audit": {"kinds": ["natural", "natural"]}}, "audit.kinds: expected distinct values"),
        ({"audit": {"kinds": ["mislabelled"]}}, "unknown value 'mislabelled'"),
        ({"audit": {"archs": ["upernet_tiny"]}}, "not a victim architecture"),
        ({"audit": {"confidence": 1.0}}, "audit.confidence"),
        ({"audit": {}, "splits": {"dependent": {**GRID["splits"]["dependent"], "canaries": 0}}}, "no setting has canaries"),
        ({"audit": {}, "splits": {"dependent": {**GRID["splits"]["dependent"], "canaries": 3}}},
         "3 canaries cannot give each of 2 kinds one guess per side"),
    ]
    for changes, message in cases:
        with pytest.raises(SegleakError, match=message):
            load_grid(grid_file=_grid(tmp_path, **changes))
    assert load_grid(grid_file=_grid(tmp_path, audit=None)).audit is None
    assert dataclasses.asdict(load_grid(grid_file=_grid(tmp_path)).audit)["scores"] == ("loss", "calibrated_loss")
