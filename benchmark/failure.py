"""One line for any error an operator sees: the cause, never a traceback or a library's multi-line dump, with
credentials masked and a full disk said in words."""

from __future__ import annotations

import errno

from benchmark.errors import SegleakError
from benchmark.redact import redact

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# SQLite (and so MLflow's SQL store, which re-raises it as text) reports a full disk in words
DISK_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")


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
    """None when `exc` is not a full disk; else what it stopped, as " while writing <file>" (or "")."""
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in DISK_FULL_ERRNOS:
            return f" while writing {item.filename}" if item.filename else ""
        if any(text in str(item).lower() for text in DISK_FULL_TEXTS):
            return " while writing the MLflow database" if "database" in str(item).lower() else ""
    return None


def first_line(text: str) -> str:
    """The first line that says something (library messages put the cause first, then pages of context)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def one_line(exc: BaseException, limit: int = 1000) -> str:
    """`exc` as one line for a terminal or a log: the cause, a full disk named as such, URIs redacted."""
    where = disk_full(exc)
    if where is not None:
        return f"the disk is full{where}: free some space and run again; finished units are kept"
    text = first_line(str(exc))
    line = text if isinstance(exc, SegleakError) else f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return redact(line)[:limit]
