"""Reading a grid file: `_base_` inheritance and `custom_imports`, in mmengine's config conventions.

A grid names its bases as mmseg configs do (`_base_: default.yaml` or a list, paths relative to the file; a
built-in profile's name works too); the file's own keys override its bases', dicts merged key by key, lists and
values replaced, and `_delete_: true` inside a dict replaces the base's dict whole. `custom_imports: [my_attacks]`
(or mmengine's `{imports: [...], allow_failed_imports: false}`) imports a user's component modules, found next
to the grid file or on the Python path, so that their `@ATTACKS.register_module()` (or DEFENSES, DATASETS)
registers them before the grid is checked; Ray workers import the same modules (`SEGLEAK_CUSTOM_IMPORTS`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import SegleakError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
IMPORTS_ENV = "SEGLEAK_CUSTOM_IMPORTS"  # JSON {"paths": [...], "modules": [...]}, read by every worker


def read_grid(path: Path) -> dict[str, Any]:
    """The grid file's mapping with its `_base_` chain resolved and its custom imports done."""
    raw = _compose(path, ())
    imports = raw.pop("custom_imports", None)
    if imports is not None:
        import_components(_modules(imports, path), [str(path.parent.resolve())], str(path))
    return raw


def import_components(modules: list[str], paths: list[str], source: str) -> None:
    """Import a grid's component modules here and, through the environment, in the Ray workers started later."""
    for folder in paths:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an ImportError, or the module's own error: name both
            raise SegleakError(f"grid {source}: custom_imports: cannot import {module!r}: "
                               f"{type(exc).__name__}: {exc}") from None
    known = json.loads(os.environ.get(IMPORTS_ENV, '{"paths": [], "modules": []}'))
    os.environ[IMPORTS_ENV] = json.dumps({"paths": sorted(set(known["paths"]) | set(paths)),
                                          "modules": sorted(set(known["modules"]) | set(modules))})


def import_worker_components() -> None:
    """In a worker: import the custom component modules the driver's grid named."""
    if os.environ.get(IMPORTS_ENV):
        spec = json.loads(os.environ[IMPORTS_ENV])
        import_components(spec["modules"], spec["paths"], "of this run")


def _modules(value: Any, path: Path) -> list[str]:
    entries = value.get("imports") if isinstance(value, dict) else value
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise SegleakError(f"grid {path}: custom_imports: expected a list of module names, got {value!r}")
    return entries


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SegleakError(f"grid {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SegleakError(f"grid {path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _compose(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise SegleakError(f"grid {path}: _base_ cycle: {' -> '.join(p.name for p in (*chain, path))}")
    raw = _load(path)
    bases = raw.pop("_base_", [])
    merged: dict[str, Any] = {}
    for base in bases if isinstance(bases, list) else [bases]:
        merged = _merge(merged, _compose(_base_path(base, path), (*chain, path)))
    return _merge(merged, raw)


def _base_path(base: Any, path: Path) -> Path:
    if not isinstance(base, str) or not base:
        raise SegleakError(f"grid {path}: _base_: expected a file name or a list of them, got {base!r}")
    for candidate in (path.parent / base, PROFILES_DIR / base, PROFILES_DIR / f"{base}.yaml"):
        if candidate.is_file():
            return candidate
    raise SegleakError(f"grid {path}: _base_: {base!r} is neither a file next to it nor a built-in profile")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and not value.pop("_delete_", False) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
