"""Declared parameters: what a component (a defense, an attack, a dataset, a block of the grid) accepts.

A component declares its parameters once, with their type, bounds, choices and defaults; the grid spec,
the command line and the component itself all validate through `check_params`, so a name or a bound is
never repeated in a second place and a typo fails on load with the key and the value named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmark.errors import SegleakError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One parameter: `kind` is int, float, str, bool, list (of `item` values), dict (a mapping checked by
    its owner) or object (anything, checked by its owner)."""

    kind: type
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value > low; False: value >= low
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False  # None is accepted (and is the usual default then)
    item: type | None = None  # element kind of a list
    length: int | None = None  # exact length of a list
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def _bounds(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open or self.high is None else ']'}"

    def _scalar(self, where: str, value: Any, kind: type) -> Any:
        if kind is object:
            return value
        if kind is dict:
            if not isinstance(value, Mapping):
                raise SegleakError(f"{where}: expected a mapping, got {value!r}")
            return dict(value)
        if self.choices is not None:
            if value not in self.choices:
                raise SegleakError(f"{where}: unknown value {value!r} (known: {', '.join(map(str, self.choices))})")
            return value
        if kind is bool:
            if not isinstance(value, bool):
                raise SegleakError(f"{where}: expected true or false, got {value!r}")
            return value
        if kind is str:
            if not isinstance(value, str) or not value:
                raise SegleakError(f"{where}: expected a non-empty string, got {value!r}")
            return value
        integer = kind is int
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise SegleakError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise SegleakError(f"{where}: expected a finite number, got {value!r}")
        low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        high_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if low_bad or high_bad:
            raise SegleakError(f"{where}: value {value!r} is outside {self._bounds()}")
        return int(value) if integer else float(value)

    def check(self, where: str, value: Any) -> Any:
        """The validated (and normalised: ints stay ints, numbers become floats) value, or SegleakError."""
        if value is None:
            if self.nullable:
                return None
            raise SegleakError(f"{where}: a value is required, got null")
        if self.kind is list:
            if not isinstance(value, (list, tuple)):
                raise SegleakError(f"{where}: expected a list, got {value!r}")
            if self.length is not None and len(value) != self.length:
                raise SegleakError(f"{where}: expected {self.length} values, got {len(value)}")
            return [self._scalar(f"{where}[{i}]", v, self.item or object) for i, v in enumerate(value)]
        return self._scalar(where, value, self.kind)


def check_params(where: str, declared: Mapping[str, Param], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """`given` validated against `declared`, defaults filled in (None-valued defaults left out), in the
    declared order; an unknown or missing key raises SegleakError naming `where`, the key and the known keys."""
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise SegleakError(f"{where}: expected a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        raise SegleakError(f"{where}: unknown key {unknown[0]!r} (known: {known})")
    out: dict[str, Any] = {}
    for key, param in declared.items():
        if key in given:
            out[key] = param.check(f"{where}.{key}", given[key])
        elif param.required:
            raise SegleakError(f"{where}: missing required key {key!r}")
        elif param.default is not None:
            out[key] = param.default
    return out
