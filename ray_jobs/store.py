"""Results storage: one directory per finished unit, made visible atomically.

A unit writes into a private temporary directory beside its final place and is renamed into
`<root>/<kind>/<key>/` only when complete, with `unit.json` written last. A crash or a kill therefore
leaves either nothing or a stale temp dir (ignored and swept), never a half-written unit, and
`is_done` is a plain existence check. The root must be a POSIX path (local disk or NFS), the same
path on every node; every unit also appends one line to `ledger.jsonl` (who computed what, how long),
which is how tests prove that a resumed run trained each model exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from benchmark.errors import SegleakError

MARKER = "unit.json"
TEMP_PREFIX = ".tmp-"


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        text = str(root)
        if "://" in text and not text.startswith("file://"):
            raise SegleakError(
                f"results location {text!r}: only local or network-mounted (NFS) paths are supported; "
                "mount the bucket (e.g. s3fs/mountpoint-s3) and pass the mount path"
            )
        self.root = Path(text.removeprefix("file://")).expanduser().resolve()

    def unit_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def is_done(self, kind: str, key: str) -> bool:
        return (self.unit_dir(kind, key) / MARKER).is_file()

    def read_unit(self, kind: str, key: str) -> dict[str, Any]:
        path = self.unit_dir(kind, key) / MARKER
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise SegleakError(f"unit {key} is not in the results store {self.root}") from None

    @contextlib.contextmanager
    def writing(self, kind: str, key: str, config: dict[str, Any]) -> Iterator[Path]:
        """Yield a temp dir to fill; on success write the marker and publish it under its key."""
        final = self.unit_dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TEMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.time()
        try:
            yield tmp
            summary_path = tmp / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            record = {"kind": kind, "key": key, "config": config, "summary": summary,
                      "seconds": round(time.time() - started, 3), "host": socket.gethostname(), "pid": os.getpid()}
            (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.is_done(kind, key):  # not a lost race with an identical attempt: a real failure
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return
            self.append_ledger({k: record[k] for k in ("kind", "key", "seconds", "host", "pid")})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def append_ledger(self, event: dict[str, Any]) -> None:
        line = json.dumps({**event, "time": time.time()}, sort_keys=True) + "\n"
        fd = os.open(self.root / "ledger.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())  # one small O_APPEND write: atomic with respect to other writers
        finally:
            os.close(fd)

    def ledger(self) -> list[dict[str, Any]]:
        path = self.root / "ledger.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def sweep_stale(self, older_than_s: float = 0.0) -> int:
        """Remove temp dirs left by killed attempts (call before scheduling, when no unit is running)."""
        removed = 0
        now = time.time()
        for tmp in self.root.glob(f"*/{TEMP_PREFIX}*"):
            if now - tmp.stat().st_mtime >= older_than_s:
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        return removed

    def write_json_atomic(self, relative: str, payload: Any) -> Path:
        """Small driver-side files (manifests, reports) written by temp file + rename."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(payload if isinstance(payload, str) else json.dumps(payload, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return path
