"""Results storage: one folder per finished unit, made visible all at once, on a POSIX path or a bucket.

The root is a local/NFS path (the same path on every node) or any fsspec URL such as `s3://bucket/prefix`
(MinIO through `AWS_ENDPOINT_URL`). A unit always computes into a private local temp dir. On a path the
temp dir sits beside its final place and is renamed to `<root>/<kind>/<key>/`; on a bucket every file is
uploaded to that prefix and `unit.json` is uploaded last. Either way the marker is the commit point: a
crash leaves a stale temp dir or an object prefix without a marker, `is_done` is "the marker exists", and
a rerun overwrites the leftovers. Readers ask for `local_dir`: the unit folder itself on a path, a
download into a per-node cache (`$SEGLEAK_CACHE`, default `~/.cache/segleak`) for a bucket.

Every published unit also adds one small file under `<root>/ledger/` (who computed what, how long): one
object per event because a bucket cannot append (and O_APPEND is not atomic on NFS either); tests count
trainings with it to prove a resumed run trained each model exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from benchmark.errors import SegleakError

MARKER = "unit.json"
TEMP_PREFIX = ".tmp-"
LEDGER = "ledger"
# what a worker on another node needs to reach the bucket; the runner forwards these for a remote root
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                  "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


def _cache_home() -> Path:
    return Path(os.environ.get("SEGLEAK_CACHE") or Path.home() / ".cache" / "segleak").expanduser()


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        text = str(root)
        try:
            # no listings cache: other processes publish units while this one polls for markers
            self.fs, base = fsspec.core.url_to_fs(text, use_listings_cache=False)
        except (ImportError, ValueError) as exc:
            raise SegleakError(f"results location {text!r}: {exc}") from None
        self.remote = not isinstance(self.fs, LocalFileSystem)
        if self.remote:
            self._base = base.rstrip("/")
            self.root = self.fs.unstrip_protocol(self._base)
            # the node-local mirror: downloads for readers, temp dirs for writers, synthetic data, the report
            self.local_root = _cache_home() / hashlib.sha256(self.root.encode()).hexdigest()[:16]
        else:
            self.local_root = Path(base).expanduser().resolve()
            self._base = self.root = str(self.local_root)

    def _path(self, *parts: str) -> str:
        return "/".join((self._base, *parts))

    def location(self, kind: str, key: str) -> str:
        """Where a unit lives, as a path or URL to show users (checkpoint tags, messages)."""
        return f"{self.root}/{kind}/{key}"

    @property
    def data_dir(self) -> Path:
        """Local folder for data every node can regenerate (synthetic datasets): never uploaded."""
        return self.local_root / "data"

    def prepare(self) -> None:
        """Create the root, or check that the bucket takes writes: one clear line before Ray starts."""
        if not self.remote:
            self.local_root.mkdir(parents=True, exist_ok=True)
            return
        probe = self._path(f"{TEMP_PREFIX}probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except FileNotFoundError:
            raise SegleakError(f"results location {self.root}: the bucket does not exist; create it first") from None
        except Exception as exc:  # noqa: BLE001 - unreachable endpoint, bad credentials, ...: name the URI
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SegleakError(f"results location {self.root}: cannot write there ({type(exc).__name__}: {message}); "
                               "check AWS_ENDPOINT_URL and the credentials") from None

    def is_done(self, kind: str, key: str) -> bool:
        return self.fs.exists(self._path(kind, key, MARKER))

    def read_unit(self, kind: str, key: str) -> dict[str, Any]:
        try:
            return json.loads(self.fs.cat_file(self._path(kind, key, MARKER)))
        except FileNotFoundError:
            raise SegleakError(f"unit {key} is not in the results store {self.root}") from None

    def local_dir(self, kind: str, key: str) -> Path:
        """A finished unit's files on local disk: the unit folder itself, or a cached download of it."""
        final = self.local_root / kind / key
        if not self.remote or (final / MARKER).is_file():
            return final
        remote_files = self.fs.find(self._path(kind, key))
        if self._path(kind, key, MARKER) not in remote_files:
            raise SegleakError(f"unit {key} is not in the results store {self.root}")
        tmp = self._temp_dir(final)
        try:
            prefix = len(self._path(kind, key)) + 1
            local_files = [str(tmp / name[prefix:]) for name in remote_files]
            for path in local_files:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(remote_files, local_files)
            self._install(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    @staticmethod
    def _temp_dir(final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TEMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    @staticmethod
    def _install(tmp: Path, final: Path) -> bool:
        """Rename a complete temp dir into place; False if an identical attempt got there first."""
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            if not (final / MARKER).is_file():  # not a lost race with an identical attempt: a real failure
                raise
            return False

    def _upload(self, tmp: Path, kind: str, key: str) -> None:
        """Every file of a finished unit, then its marker: the marker's upload commits the unit."""
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.relative_to(tmp).as_posix() != MARKER)
        if files:
            self.fs.put([str(p) for p in files], [self._path(kind, key, p.relative_to(tmp).as_posix()) for p in files])
        self.fs.put_file(str(tmp / MARKER), self._path(kind, key, MARKER))

    @contextlib.contextmanager
    def writing(self, kind: str, key: str, config: dict[str, Any]) -> Iterator[Path]:
        """Yield a local temp dir to fill; on success write the marker and publish it under its key."""
        final = self.local_root / kind / key
        tmp = self._temp_dir(final)
        started = time.time()
        try:
            yield tmp
            summary_path = tmp / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            record = {"kind": kind, "key": key, "config": config, "summary": summary,
                      "seconds": round(time.time() - started, 3), "host": socket.gethostname(), "pid": os.getpid()}
            (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
            if self.remote:
                self._upload(tmp, kind, key)
            # on a path the rename publishes; on a bucket it only keeps a local copy for this node's readers
            if self._install(tmp, final) or self.remote:
                self.append_ledger({k: record[k] for k in ("kind", "key", "seconds", "host", "pid")})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_bytes(self, relative: str, data: bytes) -> None:
        """One file, visible whole or not at all: an object PUT on a bucket, temp file + rename on a path."""
        path = self._path(relative)
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{TEMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def append_ledger(self, event: dict[str, Any]) -> None:
        name = f"{LEDGER}/{time.time_ns():020d}-{event['key']}-{uuid.uuid4().hex[:8]}.json"
        self._write_bytes(name, json.dumps({**event, "time": time.time()}, sort_keys=True).encode())

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger event, oldest first."""
        # an event still being written on a path is `.tmp-<name>.json-<hex>`: not listed
        names = [p for p in self.fs.find(self._path(LEDGER)) if p.endswith(".json")]
        events = [json.loads(blob) for blob in self.fs.cat(names).values()] if names else []
        return sorted(events, key=lambda e: e["time"])

    def sweep_stale(self, older_than_s: float = 0.0) -> int:
        """Remove local temp dirs left by killed attempts (call before scheduling, when no unit is running).

        On a bucket nothing partial is visible without its marker, so only the local mirror is swept.
        """
        removed = 0
        now = time.time()
        for tmp in self.local_root.glob(f"*/{TEMP_PREFIX}*"):
            if now - tmp.stat().st_mtime >= older_than_s:
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def write_json_atomic(self, relative: str, payload: Any) -> str:
        """Small driver-side files (manifests): written whole, returned as their path or URL."""
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=1, sort_keys=True)
        self._write_bytes(relative, text.encode())
        return f"{self.root}/{relative}"

    def publish_dir(self, relative: str) -> str:
        """Make a folder written under `local_root` (the report) visible at the root; returns where it is."""
        if self.remote:
            local = self.local_root / relative
            files = sorted(p for p in local.rglob("*") if p.is_file())
            if files:
                self.fs.put([str(p) for p in files], [self._path(relative, p.relative_to(local).as_posix()) for p in files])
        return f"{self.root}/{relative}"
