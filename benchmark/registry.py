"""Registries of segleak's components, in mmengine's registry convention (as mmseg registers heads).

A component is one class in one file plus `@ATTACKS.register_module()` (or DEFENSES, DATASETS); grid files
name it by its `name` (snake_case, as users type it), and everything that needs the list of names (the grid
spec, the command line, the tests' contract checks, the report's display order) asks the registry.
"""

from __future__ import annotations

from typing import Any

from mmengine.registry import Registry

from benchmark.errors import SegleakError


class ComponentRegistry(Registry):
    """An mmengine Registry keyed by each class's `name` attribute, with lookups that fail in one clear line."""

    def _register_module(self, module: type, module_name: str | list[str] | None = None, force: bool = False) -> None:
        super()._register_module(module, module_name or getattr(module, "name", None), force)

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

    def version(self, spec: str | dict[str, Any]) -> int:
        """The code version of the component a config names (by string, or a dict's `name` or `type`)."""
        name = spec if isinstance(spec, str) else spec.get("name", spec.get("type"))
        return getattr(self.lookup(name), "version", 1)


ATTACKS = ComponentRegistry("attack", scope="segleak", locations=["benchmark.attacks.components"])
DEFENSES = ComponentRegistry("defense", scope="segleak", locations=["benchmark.defenses.components"])
DATASETS = ComponentRegistry("dataset", scope="segleak", locations=["benchmark.data.datasets"])
