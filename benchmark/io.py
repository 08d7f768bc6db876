"""Files that are visible whole or not at all: the one atomic-write helper everything writes through."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from benchmark.failure import DiskFull, disk_full_at


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write `data` (bytes, text, or a function writing to a binary file) to a temp file beside `path`,
    then rename it into place: a reader sees the old file or the complete new one, never a partial one. A
    write that finds the disk full raises DiskFull naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException as exc:
        full = disk_full_at(exc, tmp) if isinstance(exc, Exception) else None  # before the unlink frees space
        Path(tmp).unlink(missing_ok=True)
        if full is None:
            raise
        raise DiskFull(str(path), full.free) from exc
    return path
