"""Defenses against membership inference: registered components (`components/`, one file each) built on
the base classes in `base.py`; `output.py` holds the probability-space functions of the public API."""

from __future__ import annotations

from typing import Any

from benchmark.defenses.base import Defense
from benchmark.errors import SegleakError
from benchmark.registry import DEFENSES


def build_defense(name: str, params: dict[str, Any] | None = None, side: str | None = None) -> Defense:
    """The registered defense `name` with validated `params`; `side` ("output"/"training") is checked if given."""
    defense = DEFENSES.lookup(name)(**(params or {}))
    if side is not None and defense.side != side:
        raise SegleakError(f"defense {name!r} acts on the {defense.side} side, not the {side} side")
    return defense


def output_transform(spec: dict[str, Any]) -> Any:
    """The output defense of a `{name, params}` spec, or None when it does not act on outputs (`none`, or a
    training-side defense: the victim's outputs are released as they are)."""
    defense = build_defense(spec["name"], spec.get("params"))
    return defense if defense.output_side else None
