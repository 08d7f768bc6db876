"""Grid entries: the machinery every grid block is parsed with. A defense or attack entry (`name`, or a mapping
with `name`, parameter values or lists of values to sweep, `only:` and, for attacks, `tune:`) becomes typed
settings validated by the component's own declaration; the `Checker` puts the grid file and key in every
message. The grid spec (ray_jobs.grid.spec) and its `audit` block (ray_jobs.grid.audit_block) both use it.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmark.attacks.base import Attack
from benchmark.attacks.patch_attack import ATTACK_TRAIN_PARAMS
from benchmark.defenses.base import Defense
from benchmark.errors import SegleakError
from benchmark.params import Param, check_params
from benchmark.registry import ATTACKS, DEFENSES
from benchmark.safe_paths import check_name

CONTROLS = ("placebo",)

def _frozen(values: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items())


@dataclass(frozen=True)
class Only:
    """Where a grid entry applies (`only:` in a defense or attack entry): the victim architectures, shadow
    overlaps, setting kinds and controls it runs with; empty = everywhere. A grid spends its budget where it
    matters, e.g. a sweep of training-side defenses on one architecture at overlap 0."""

    victim_archs: tuple[str, ...] = ()
    overlaps: tuple[float, ...] = ()
    settings: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()
    defenses: tuple[str, ...] = ()  # attacks only: the defenses (by name, or one setting by its label) it runs against

    def allows(self, victim_arch: str, overlap: float, setting: str, control: str, defense: str = "",
               defense_label: str = "") -> bool:
        return ((not self.victim_archs or victim_arch in self.victim_archs)
                and (not self.overlaps or setting != "dependent" or overlap in self.overlaps)
                and (not self.settings or setting in self.settings)
                and (not self.controls or control in self.controls)
                and (not self.defenses or defense in self.defenses or defense_label in self.defenses))


EVERYWHERE = Only()


@dataclass(frozen=True)
class DefenseSetting:
    """One defense column of the grid: a registered defense and one combination of its parameters."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    only: Only = field(default=EVERYWHERE, compare=False)

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @functools.cached_property
    def defense(self) -> Defense:
        return DEFENSES.lookup(self.name)(**self.params_dict)

    @property
    def output_side(self) -> bool:
        return self.defense.output_side

    @property
    def label(self) -> str:
        return self.defense.label

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params_dict}


NO_DEFENSE = DefenseSetting("none")


@dataclass(frozen=True)
class AttackSetting:
    """One attack of the grid: a registered attack and one combination of its parameters."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    only: Only = field(default=EVERYWHERE, compare=False)
    tune: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # candidate values Ray Tune chooses among, per parameter

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def build(self, attack_train: dict[str, Any] | None = None) -> Attack:
        return ATTACKS.lookup(self.name)(attack_train=attack_train, **self.params_dict)

    @functools.cached_property
    def attack(self) -> Attack:
        return self.build()

    @property
    def label(self) -> str:
        return self.attack.label

    @property
    def representation(self) -> str:
        return self.attack.representation

    def to_json(self) -> dict[str, Any]:
        tune = {"tune": {k: list(v) for k, v in self.tune}} if self.tune else {}
        return {"name": self.name, "params": self.params_dict, **tune}



class Checker:
    """Runs every check with the grid file in the message, so each error names file, key and value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SegleakError as exc:
            raise SegleakError(f"grid {self.source}: {exc}") from None

    def at(self, where: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Like calling the checker, with the grid key in the message too."""
        try:
            return function(*args, **kwargs)
        except SegleakError as exc:
            raise self.fail(where, str(exc)) from None

    def fail(self, where: str, message: str) -> SegleakError:
        return SegleakError(f"grid {self.source}: {where}: {message}")

    def items(self, where: str, value: Any, item: type, low: float | None = None, high: float | None = None,
              choices: tuple[Any, ...] | None = None, nonempty: bool = True) -> list[Any]:
        """A list (a bare value counts as a one-element list) of valid items; empty lists refused."""
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if nonempty and not values:
            raise self.fail(where, "expected at least one value, got an empty list")
        param = Param(item, low=low, high=high, choices=choices)
        return [self(param.check, f"{where}[{i}]", v) for i, v in enumerate(values)]


ONLY_PARAMS = {
    "victim_archs": Param(list, default=[], item=str),
    "overlaps": Param(list, default=[], item=float),
    "settings": Param(list, default=[], item=str, choices=("dependent", "independent")),
    "controls": Param(list, default=[], item=str, choices=("none", *CONTROLS)),
    "defenses": Param(list, default=[], item=str),
}


def parse_only(check: Checker, where: str, entry: dict[str, Any], attack: bool = False) -> Only:
    values = check(check_params, f"{where}.only", ONLY_PARAMS, entry.get("only", {}))
    if values["defenses"] and not attack:
        raise check.fail(f"{where}.only.defenses", "only an attack entry can name the defenses it runs against")
    for name in values["defenses"]:  # a name, or a setting's label such as "gaussian(sigma=0.05)"
        check.at(f"{where}.only.defenses", DEFENSES.lookup, name.split("(")[0])
    return Only(**{k: tuple(v) for k, v in values.items()})


def sweep(check: Checker, where: str, entry: Any, registry, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """A component entry (`name` or `{name, param: value or [values], only: {...}}`) expanded into one
    (name, params) per combination of listed values, each validated by the component's own declaration."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise check.fail(where, f"expected a {kind} name or a mapping with 'name'")
    check(check_name, f"{where}.name", entry["name"])
    cls = check.at(f"{where}.name", registry.lookup, entry["name"])
    params = {k: v for k, v in entry.items() if k not in ("name", "only", "tune")}
    unknown = sorted(set(params) - set(cls.params))
    if unknown:
        raise check.fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(cls.params) or 'none'})")
    keys = sorted(params)
    lists = [params[k] if isinstance(params[k], list) and cls.params[k].kind is not list else [params[k]] for k in keys]
    return [(cls.name, dict(zip(keys, combo))) for combo in itertools.product(*lists)]


def parse_defenses(check: Checker, entries: list[Any], class_counts: set[int]) -> tuple[DefenseSetting, ...]:
    out: list[DefenseSetting] = []
    for i, entry in enumerate(entries):
        where = f"defenses[{i}]"
        only = parse_only(check, where, entry) if isinstance(entry, dict) else EVERYWHERE
        for name, params in sweep(check, where, entry, DEFENSES, "defense"):
            defense = check.at(where, DEFENSES.lookup(name), **params)
            for n in class_counts:
                check.at(where, defense.check_classes, n)
            out.append(DefenseSetting(name, _frozen(defense.values), only))
    if len(set(out)) != len(out):
        raise check.fail("defenses", "a defense setting is listed twice")
    return tuple(out)


def parse_tune(check: Checker, where: str, entry: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """An attack entry's `tune:` block: candidate values per tunable parameter, each checked like a value."""
    raw = entry.get("tune", {}) if isinstance(entry, dict) else {}
    if not isinstance(raw, dict):
        raise check.fail(f"{where}.tune", f"expected a mapping of parameter -> candidate values, got {raw!r}")
    cls = check.at(f"{where}.name", ATTACKS.lookup, entry["name"]) if raw else None
    out = []
    for key, values in raw.items():
        if key not in cls.tunable:
            raise check.fail(f"{where}.tune", f"unknown key {key!r} (tunable: {', '.join(cls.tunable) or 'none'})")
        if key in entry:
            raise check.fail(f"{where}.tune.{key}", "is also set in the entry: set it or tune it")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise check.fail(f"{where}.tune.{key}", "expected at least one candidate value")
        param = cls.params.get(key) or ATTACK_TRAIN_PARAMS[key]
        out.append((key, tuple(check(param.check, f"{where}.tune.{key}[{i}]", v) for i, v in enumerate(values))))
    return tuple(out)


def parse_attacks(check: Checker, entries: list[Any]) -> tuple[AttackSetting, ...]:
    out: list[AttackSetting] = []
    for i, entry in enumerate(entries):
        where = f"attacks[{i}]"
        only = parse_only(check, where, entry, attack=True) if isinstance(entry, dict) else EVERYWHERE
        tune = parse_tune(check, where, entry)
        for name, params in sweep(check, where, entry, ATTACKS, "attack"):
            attack = check.at(where, ATTACKS.lookup(name), **params)
            out.append(AttackSetting(name, _frozen(attack.values), only, tune))
    if len(set(out)) != len(out):
        raise check.fail("attacks", "an attack setting is listed twice")
    return tuple(out)
