"""Sealed markers: a unit's `unit.json` lists each of its files with size and sha256 and a checksum of itself,
so a reader can tell an intact unit from a damaged one (`DamagedUnit`) cheaply (sizes) or fully (hashes)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "unit.json"


class DamagedUnit(Exception):
    """A finished unit whose files do not match its marker. Recoverable: recompute the unit (it has been
    moved aside to `moved_to`, unless another process was recomputing it already) and read it again."""

    def __init__(self, kind: str, key: str, reason: str, moved_to: str | None = None) -> None:
        super().__init__(kind, key, reason, moved_to)  # all in args: survives pickling across Ray
        self.kind, self.key, self.reason, self.moved_to = kind, key, reason, moved_to

    def __str__(self) -> str:
        where = f"; moved aside to {self.moved_to}" if self.moved_to else ""
        return f"{self.kind} unit {self.key} is damaged: {self.reason}{where}"


# checksums

_SHA_CACHE: dict[tuple, str] = {}


def _sha256_file(path: Path, stat: os.stat_result | None = None) -> str:
    """sha256 of a file, remembered per (path, inode, size, mtime): a process re-reading an input hashes it once."""
    stat = stat or path.stat()
    memo = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if memo not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if len(_SHA_CACHE) > 10_000:
            _SHA_CACHE.clear()
        _SHA_CACHE[memo] = digest.hexdigest()
    return _SHA_CACHE[memo]


def _record_checksum(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _seal(record: dict[str, Any]) -> dict[str, Any]:
    """The marker as written: JSON-normalised, with a checksum of its own content."""
    normal = json.loads(json.dumps(record, default=str))
    return {**normal, "checksum": _record_checksum(normal)}


def _parse_marker(blob: bytes, key: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        record = json.loads(blob)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return None, f"{MARKER} is not valid JSON ({exc})"
    if not isinstance(record, dict):
        return None, f"{MARKER} is not a JSON object"
    if "checksum" in record and _record_checksum(record) != record["checksum"]:
        return None, f"{MARKER}: its content does not match its checksum"
    if record.get("key", key) != key:
        return None, f"{MARKER} belongs to unit {record['key']}"
    return record, None


def _check_files(directory: Path, files: dict[str, dict[str, Any]], deep: bool) -> str | None:
    """Why a unit's files differ from what its marker lists (sizes first: a stat each), None if they match."""
    stats = {}
    for rel, meta in sorted(files.items()):
        try:
            stats[rel] = (directory / rel).stat()
        except FileNotFoundError:
            return f"{rel} is missing"
        if stats[rel].st_size != meta["bytes"]:
            return f"{rel}: {stats[rel].st_size} bytes, marker says {meta['bytes']}"
    if deep:
        for rel, meta in sorted(files.items()):
            actual = _sha256_file(directory / rel, stats[rel])
            if actual != meta["sha256"]:
                return f"{rel}: sha256 mismatch (file {actual[:12]}, marker says {meta['sha256'][:12]})"
    return None


@dataclass
class _Check:
    """What is at a unit's place: nothing (`missing`), a damaged unit (`reason`), or an intact one."""

    missing: bool = False
    reason: str | None = None
    blob: bytes = b""
    record: dict[str, Any] | None = None

    @property
    def intact(self) -> bool:
        return not self.missing and self.reason is None
