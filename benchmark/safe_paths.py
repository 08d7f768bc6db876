"""Names that become file names, and files that must stay in their folder.

A grid's names (its own, its datasets', architectures', defenses' and attacks') end up in paths: the leakage
maps are named after the dataset and the architecture, a profile name is a file in the profiles folder. A
name such as `../../x/ESCAPED` would write outside `--results`. Two guards, so neither alone has to be
perfect: names are checked on load against a safe character set (`check_name`), and every report writer
builds its file paths through `inside`, which refuses a path that resolves outside its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.errors import SegleakError

MAX_NAME = 100
# letters, digits, '_', '-' and '.', starting with a letter or digit: no separator, no '..', no hidden file
SAFE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_NAME - 1}}}")


def check_name(where: str, value: object) -> str:
    """`value` if it is a safe name; else SegleakError naming `where` (the key) and the value."""
    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return value
    raise SegleakError(f"{where}: {value!r} is not a usable name: it becomes part of file names, so use up to "
                       f"{MAX_NAME} letters, digits, '_', '-' or '.', starting with a letter or digit")


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused (SegleakError) when it resolves outside `folder` (a '..' or an absolute name,
    a symlink pointing away): every file a report writes is built with this."""
    root = Path(folder).resolve()
    resolved = (root / name).resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise SegleakError(f"refusing to write {name!r}: it resolves to {resolved}, outside {root}")
    return Path(folder) / name
