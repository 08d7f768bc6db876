"""Locks with leases: whoever computes a unit holds `<root>/<kind>/.lock-<key>` (`claim`), naming its owner
(ray_jobs.recording.owner). A process needing a unit someone else holds waits for its marker; it takes the lock
over only when the owner is provably gone: on its host, that process is dead; elsewhere, the lease (the lock's
mtime, refreshed by the heartbeat) is older than `lease_s`. On a path the lock is made with link(2), atomic on
NFS too; on a bucket it is an object, best effort. A mixin of `ResultStore`, which provides the I/O."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ray_jobs.recording.owner import _HEARTBEAT, HOST, TEMP_PREFIX, current_owner, owner_alive, temp_name

LOCK_PREFIX = ".lock-"
BREAK_SUFFIX = ".breaking"  # a short-lived lock on a lock: one process at a time takes over a stale one
BREAK_LEASE_S = 60.0     # a takeover takes milliseconds: a `.breaking` file this old is left over
_SWEPT: set[str] = set()  # roots this process has swept once (see `claim`)


class LeaseLocks:
    """The lock half of `ResultStore`."""

    def _lock_path(self, kind: str, key: str) -> str:
        return self._path(kind, f"{LOCK_PREFIX}{key}")

    def _owner_record(self) -> dict[str, Any]:
        host_id, pid, start = current_owner()
        return {"host": HOST, "host_id": host_id, "pid": pid, "start": start, "invocation": self.invocation,
                "token": uuid.uuid4().hex, "since": time.time()}

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create a small file with this content unless it exists: atomic on a path, best effort on a bucket."""
        if self.remote:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            time.sleep(0.2)  # a racing writer's PUT lands after ours: read back whose content won
            try:
                return self.fs.cat_file(path) == data
            except FileNotFoundError:
                return False
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(temp_name(target.name))
        tmp.write_bytes(data)
        try:
            os.link(tmp, target)  # fails if the target exists; the content is complete from the start
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            try:
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _read_lock(self, path: str) -> tuple[dict[str, Any] | None, float]:
        """(content, lease time) of a lock file; ({}, mtime) if unreadable, (None, 0) if there is none."""
        try:
            if self.remote:
                blob = self.fs.cat_file(path)
                modified = self.fs.info(path).get("LastModified")
                mtime = modified.timestamp() if hasattr(modified, "timestamp") else time.time()
            else:
                mtime = os.stat(path).st_mtime
                blob = Path(path).read_bytes()
        except FileNotFoundError:
            return None, 0.0
        try:
            record = json.loads(blob)
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), mtime

    def _stale(self, record: dict[str, Any], mtime: float, lease_s: float | None = None) -> str | None:
        """Why a lock's (or temp file's) owner is provably gone; None while it may be alive."""
        alive = owner_alive(record.get("host_id"), record.get("pid"), record.get("start"))
        if alive is False:
            return f"its owner, pid {record.get('pid')} on {record.get('host')}, is gone"
        age = time.time() - mtime
        if alive is None and age > (lease_s or self.lease_s):
            return f"its lease is {age:.0f} s old"
        return None

    def _remove(self, path: str, token: str | None = None) -> None:
        """Delete a lock file; with a token, only while it still holds that token."""
        if token is not None:
            current, _ = self._read_lock(path)
            if current is None or current.get("token") != token:
                return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path) if self.remote else os.unlink(path)

    def _break(self, path: str, stale: dict[str, Any]) -> bool:
        """Remove a stale lock unless it changed meanwhile; one process at a time (a `.breaking` lock)."""
        breaker = path + BREAK_SUFFIX
        mine = self._owner_record()
        if not self._create_exclusive(breaker, json.dumps(mine).encode()):
            record, mtime = self._read_lock(breaker)
            if record is not None and self._stale(record, mtime, BREAK_LEASE_S):
                self._remove(breaker, record.get("token"))  # a breaker that died mid-way
            return False
        try:
            current, _ = self._read_lock(path)
            if current is not None and current.get("token") == stale.get("token"):
                self._remove(path)
            return True
        finally:
            self._remove(breaker, mine["token"])

    def _touch_lock(self, path: str, token: str, blob: bytes) -> None:
        if not self.remote:
            os.utime(path)  # the mtime is the lease; a lock taken over meanwhile is another inode's business
        elif (self._read_lock(path)[0] or {}).get("token") == token:
            self.fs.pipe_file(path, blob)

    def _try_lock(self, kind: str, key: str) -> str | None:
        """Take a unit's lock if it is free or its owner is gone: its token, or None if someone holds it."""
        return self._take_lock(kind, key)[0]

    def _take_lock(self, kind: str, key: str) -> tuple[str | None, bool]:
        """`_try_lock`, and whether a gone owner's lock was taken over (its temp dirs may be left)."""
        path = self._lock_path(kind, key)
        took_over = False
        for _ in range(3):
            record = self._owner_record()
            blob = json.dumps(record, indent=1).encode()
            if self._create_exclusive(path, blob):
                _HEARTBEAT.add(f"{path}#{record['token']}", lambda: self._touch_lock(path, record["token"], blob),
                               every=max(0.05, min(30.0, self.lease_s / 4)))
                return record["token"], took_over
            current, mtime = self._read_lock(path)
            if current is not None and self._stale(current, mtime) is None:
                return None, False
            if current is not None:
                took_over = self._break(path, current) or took_over
        return None, False

    def _unlock(self, kind: str, key: str, token: str) -> None:
        path = self._lock_path(kind, key)
        _HEARTBEAT.remove(f"{path}#{token}")
        self._remove(path, token)

    @contextlib.contextmanager
    def holding(self, kind: str, key: str) -> Iterator[None]:
        """Hold the lock `<root>/<kind>/.lock-<key>` for a short critical section, waiting while another live
        process holds it (a gone owner's lock is taken over, as for `claim`)."""
        token = self._try_lock(kind, key)
        while token is None:
            time.sleep(min(self.poll_s, 0.05))
            token = self._try_lock(kind, key)
        try:
            yield
        finally:
            self._unlock(kind, key, token)

    def lock_owner(self, kind: str, key: str) -> dict[str, Any] | None:
        """Who holds a unit's lock now (host, pid, invocation, since), or None."""
        return self._read_lock(self._lock_path(kind, key))[0]

    @contextlib.contextmanager
    def claim(self, kind: str, key: str) -> Iterator[bool]:
        """Hold a unit's lock while computing it. Yields True when the caller must compute the unit (inside
        the block, with `writing`), False when it is finished: it was already, or another process held the
        lock and finished it while this one waited. A lock whose owner is provably gone is taken over; a
        damaged copy found under the lock is moved aside, and dead owners' temp dirs for it are removed."""
        token, took_over = None, False
        while token is None and not self.is_done(kind, key):
            token, took_over = self._take_lock(kind, key)
            if token is None:
                time.sleep(self.poll_s)
        if token is None:
            yield False
            return
        try:
            if self.is_done(kind, key):  # the previous owner published it just before letting go
                yield False
                return
            check = self._check(kind, key)
            if check.reason is not None:
                self._move_aside(kind, key, check.reason)
            if took_over:  # its owner died computing it: its temp dirs (listing the kind's folder is
                # O(units), so not on every claim; `sweep_stale` finds the others)
                self._sweep(self.local_root / kind, f"{TEMP_PREFIX}{key}@*")
            if self.root not in _SWEPT:  # once per process: what other nodes' drivers cannot reach
                _SWEPT.add(self.root)
                self.sweep_stale()
            yield True
        finally:
            self._unlock(kind, key, token)

    # -----------------------------------------------------------------------------------------------------
    # writers
