"""The `needs` vocabulary is declared once (benchmark.needs): a component asking for an input no planner
provides is refused when it registers, and every declared training input has its provider in the one builder."""

from __future__ import annotations

from typing import ClassVar

import pytest

from benchmark.defenses.base import TrainingDefense
from benchmark.errors import SegleakError
from benchmark.needs import ATTACK_NEEDS, TRAINING_NEEDS
from benchmark.registry import ATTACKS, DEFENSES, ComponentRegistry
from ray_jobs.grid.builder import TRAINING_INPUTS


def test_every_registered_component_asks_for_declared_inputs_only():
    for registry, vocabulary in ((ATTACKS, ATTACK_NEEDS), (DEFENSES, TRAINING_NEEDS)):
        for name in registry.names():
            component = registry.lookup(name)
            assert set(component.needs) <= set(vocabulary), (name, component.needs)


def test_a_component_needing_an_undeclared_input_is_refused_on_registration():
    registry = ComponentRegistry("defense", scope="segleak-test-needs", needs=TRAINING_NEEDS)

    class NeedsAGhost(TrainingDefense):
        name: ClassVar[str] = "needs_a_ghost"
        needs: ClassVar[frozenset[str]] = frozenset({"ghost_images"})

    with pytest.raises(SegleakError, match=r"needs 'ghost_images', which no planner provides.*benchmark/needs.py"):
        registry.register_module()(NeedsAGhost)


def test_every_declared_training_input_has_a_provider_in_the_builder():
    assert set(TRAINING_INPUTS) == set(TRAINING_NEEDS)
