"""Registries of segleak's components, in mmengine's registry convention (as mmseg registers heads).

A component is one class in one file plus `@ATTACKS.register_module()` (or DEFENSES, DATASETS); grid files
name it by its `name` (snake_case, as users type it), and everything that needs the list of names (the grid
spec, the command line, the tests' contract checks, the report's display order) asks the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mmengine.registry import Registry

from benchmark.errors import SegleakError
from benchmark.needs import ATTACK_NEEDS, TRAINING_NEEDS


class ComponentRegistry(Registry):
    """An mmengine Registry keyed by each class's `name` attribute, with lookups that fail in one clear line.
    `needs`: the inputs its components may ask the plan for (benchmark.needs), checked as each registers."""

    def __init__(self, *args: Any, needs: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.needs = needs

    def _register_module(self, module: type, module_name: str | list[str] | None = None, force: bool = False) -> None:
        name = module_name or getattr(module, "name", None)
        unknown = sorted(set(getattr(module, "needs", ())) - set(self.needs or ())) if self.needs is not None else []
        if unknown:
            raise SegleakError(f"{self.name} {name!r} ({inspect.getsourcefile(module)}) needs {unknown[0]!r}, which "
                               f"no planner provides (declared inputs: {', '.join(self.needs)}; see benchmark/needs.py)")
        super()._register_module(module, name, force)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (the component modules are imported first)."""
        self.import_from_location()
        return tuple(self.module_dict)

    def lookup(self, name: Any) -> type:
        """The class registered as `name`; SegleakError listing the known names otherwise."""
        self.import_from_location()
        if not isinstance(name, str) or name not in self.module_dict:
            raise SegleakError(f"unknown {self.name} {name!r} (known: {', '.join(self.module_dict)})")
        return self.module_dict[name]

    @staticmethod
    def name_of(spec: str | dict[str, Any]) -> str:
        """The component a config names: a string, or a dict's `name` (attacks, defenses) or `type` (datasets)."""
        return spec if isinstance(spec, str) else spec.get("name", spec.get("type"))

    def version(self, spec: str | dict[str, Any]) -> int:
        """The code version of the component a config names."""
        return getattr(self.lookup(self.name_of(spec)), "version", 1)


ATTACKS = ComponentRegistry("attack", scope="segleak", locations=["benchmark.attacks.components"], needs=ATTACK_NEEDS)
DEFENSES = ComponentRegistry("defense", scope="segleak", locations=["benchmark.defenses.components"],
                             needs=TRAINING_NEEDS)
DATASETS = ComponentRegistry("dataset", scope="segleak", locations=["benchmark.data.datasets"])
