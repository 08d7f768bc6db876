"""One line for any error an operator sees: the cause, never a traceback or a library's multi-line dump, with
credentials masked and a full disk said in words."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from benchmark.errors import SegleakError
from benchmark.redact import redact

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# SQLite (and so MLflow's SQL store, which re-raises it as text) reports a full disk in words
DISK_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")
# write failures that carry no errno: torch.save reports ENOSPC as "[enforce fail at inline_container.cc:672]
# . unexpected pos 704 vs 598" (its C++ stream lost the error), so free space decides
WRITE_FAILURE_TEXTS = ("inline_container", "pytorchstreamwriter", "file write failed")
LOW_SPACE_BYTES = 1 << 20  # less than this left after a failed write: the disk is full


def _disk_full_line(where: str) -> str:
    return f"disk full{f' at {where}' if where else ''}: free some space and run again; finished units are kept"


class DiskFull(SegleakError):
    """A write failed because its file system is full: not a crash to retry (it would fail again) but the
    end of the run, named in one line. `free`: the bytes left there when it failed (None: unknown)."""

    def __init__(self, path: str, free: int | None = None) -> None:
        super().__init__(path, free)  # all in args: survives pickling across Ray
        self.path, self.free = path, free

    @property
    def where(self) -> str:
        return f"{self.path} ({self.free // 1024} KiB free)" if self.free is not None else self.path

    def __str__(self) -> str:
        return _disk_full_line(self.where)


def free_bytes(path: str | Path) -> int | None:
    """Bytes available to this user on the file system holding `path` (or its nearest existing folder)."""
    place = Path(path)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return shutil.disk_usage(place).free
    except OSError:
        return None


def disk_full_at(exc: BaseException, path: str | Path) -> DiskFull | None:
    """`exc`, raised while writing under `path`, as a DiskFull when the disk is full: ENOSPC/EDQUOT anywhere
    in its chain, or a write failure without an errno (an OSError, torch.save's RuntimeError) with less than
    LOW_SPACE_BYTES left at `path`. Call it before the failed write's files are removed (that frees space)."""
    chain = _chain(exc)
    free = free_bytes(path)
    if any(isinstance(item, OSError) and item.errno in DISK_FULL_ERRNOS for item in chain):
        return DiskFull(str(path), free)
    write_failed = any(isinstance(item, OSError) or any(t in str(item).lower() for t in WRITE_FAILURE_TEXTS)
                       for item in chain)
    return DiskFull(str(path), free) if write_failed and free is not None and free < LOW_SPACE_BYTES else None


def raise_if_disk_full(exc: BaseException, measured_at: str | Path, named: str | Path) -> None:
    """Raise DiskFull naming `named` (the file or folder the user knows) if `exc`, raised while writing at
    `measured_at`, was a full disk (`disk_full_at`); otherwise return and let the caller re-raise `exc`."""
    full = disk_full_at(exc, measured_at)
    if full is not None:
        raise DiskFull(str(named), full.free) from exc


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from or while handling, without cycles."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__, getattr(item, "cause", None)]  # Ray's RayTaskError.cause
    return seen


def disk_full(exc: BaseException) -> str | None:
    """None when `exc` is not a full disk; else where it was writing: a path, "the MLflow database" or ""."""
    for item in _chain(exc):
        if isinstance(item, DiskFull):
            return item.where
        if isinstance(item, OSError) and item.errno in DISK_FULL_ERRNOS:
            return str(item.filename or "")
        if any(text in str(item).lower() for text in DISK_FULL_TEXTS):
            return "the MLflow database" if "database" in str(item).lower() else ""
    return None


def first_line(text: str) -> str:
    """The first line that says something (library messages put the cause first, then pages of context)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def one_line(exc: BaseException, limit: int = 1000) -> str:
    """`exc` as one line for a terminal or a log: the cause, a full disk named as such, URIs redacted."""
    where = disk_full(exc)
    if where is not None:
        return redact(_disk_full_line(where))[:limit]
    text = first_line(str(exc))
    line = text if isinstance(exc, SegleakError) else f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return redact(line)[:limit]
