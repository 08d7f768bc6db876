"""Results storage: one folder per finished unit, made visible all at once, on a POSIX path or a bucket.

The root is a local/NFS path (the same path on every node) or any fsspec URL such as `s3://bucket/prefix`
(MinIO through `AWS_ENDPOINT_URL`). A unit always computes into a private local temp dir. On a path the
temp dir sits beside its final place and is renamed to `<root>/<kind>/<key>/`; on a bucket every file is
uploaded to that prefix and `unit.json` is uploaded last. Either way the marker is the commit point: a
crash leaves a stale temp dir or an object prefix without a marker, and a rerun overwrites the leftovers.
Readers ask for `local_dir`: the unit folder itself on a path, a download into a per-node cache
(`$SEGLEAK_CACHE`, default `~/.cache/segleak`) for a bucket.

Several invocations may share one root (issue 18):
- Ownership. Whoever computes a unit holds its lock, `<root>/<kind>/.lock-<key>` (`claim`): a small JSON
  naming the host (hostname + boot id), the pid, that process's start time (from /proc, so a reused pid is
  not taken for the owner) and the invocation. A process that needs a unit someone else holds waits for
  its marker instead of computing it again; it takes the lock over only when the owner is provably gone:
  on the same host, that process is dead; on another host, the lock's lease (its mtime, refreshed by a
  heartbeat thread while held) is older than `lease_s`. On a path the lock is created with link(2)
  (atomic, also on NFS); on a bucket it is an object, best effort. In a Ray grid the owner is the worker
  process running the unit; a killed driver's workers are killed by Ray, which makes their locks stale.
- Temp dirs and files carry their owner in their name (`.tmp-<name>@<host>.<pid>.<start>.<random>`), and
  `sweep_stale` removes only those whose owner is gone, so one invocation never deletes another's work.
  Workers also sweep their own node once (a bucket's per-node caches are out of the driver's reach).
- Checksums. The marker lists each file of the unit with its size and sha256, the sha256 of the marker
  of every unit it read (so a unit computed from an input that was damaged later shows it read it
  intact) and a checksum of itself. `is_done` stays cheap (the marker parses, file sizes match);
  `verify` hashes; readers (`read_unit`: the cheap check, `local_dir`: the full one) refuse a damaged unit
  with `DamagedUnit` (kind, key, and which file and why), after moving it to
  `<root>/damaged/<kind>/<key>-<time>/` (kept for the operator, never deleted), so recomputing it is
  the caller's recovery.
- Ledger. Every computation that completes adds one small file under `<root>/ledger/`, also one whose
  result was not published because an identical computation got there first (`published: false`), with
  the invocation, host, pid and seconds: one object per event because a bucket cannot append (and
  O_APPEND is not atomic on NFS either). Tests count trainings with it.
Each mechanism is a module of its own: owner.py (identity, temp names, the heartbeat), leases.py (`LeaseLocks`),
sealing.py (markers and checksums), ledger.py (`Ledger`); this one holds the folder, its POSIX or bucket I/O,
publishing, damaged units and sweeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, NoReturn

import fsspec
from fsspec.implementations.local import LocalFileSystem

from benchmark.errors import SegleakError
from benchmark.failure import DiskFull, raise_if_disk_full
from ray_jobs.recording.leases import BREAK_LEASE_S, BREAK_SUFFIX, LOCK_PREFIX, LeaseLocks
from ray_jobs.recording.ledger import Ledger
from ray_jobs.recording.owner import _HEARTBEAT, HOST, TEMP_PREFIX, _owner_in_name, owner_alive, temp_name
from ray_jobs.recording.sealing import MARKER, DamagedUnit, _Check, _check_files, _parse_marker, _seal, _sha256_file

DAMAGED = "damaged"
DAMAGED_NOTE = "DAMAGED.json"
DEFAULT_LEASE_S = 600.0  # another host's lock or temp dir is stale when its lease is this old
DEFAULT_POLL_S = 1.0     # how often a process waiting for another's unit looks for its marker
# what a worker on another node needs to reach the bucket; the runner forwards these for a remote root
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                  "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


def _cache_home() -> Path:
    return Path(os.environ.get("SEGLEAK_CACHE") or Path.home() / ".cache" / "segleak").expanduser()


class ResultStore(LeaseLocks, Ledger):
    """A results folder (a path or a bucket): finished units, their locks, the ledger."""

    def __init__(self, root: str | Path, invocation: str | None = None, lease_s: float | None = None,
                 poll_s: float | None = None) -> None:
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
        # one id per invocation: the driver's store makes it, the scheduler hands it to every unit it runs
        self.invocation = invocation or uuid.uuid4().hex[:12]
        self.lease_s = float(lease_s or os.environ.get("SEGLEAK_LEASE_S") or DEFAULT_LEASE_S)
        self.poll_s = float(poll_s or os.environ.get("SEGLEAK_POLL_S") or DEFAULT_POLL_S)
        self._reading = threading.local()  # per thread: the inputs read by the units it is writing

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

    # -----------------------------------------------------------------------------------------------------
    # finished units: checks and readers

    def _check(self, kind: str, key: str, deep: bool = False) -> _Check:
        """A unit's state on a path (deep: hash every file), or on a bucket (sizes from one listing)."""
        if not self.remote:
            return self._check_dir(self.local_root / kind / key, key, deep)
        try:
            blob = self.fs.cat_file(self._path(kind, key, MARKER))
        except FileNotFoundError:
            return _Check(missing=True)  # nothing, or an upload that never reached its marker
        record, reason = _parse_marker(blob, key)
        if reason is None and record.get("files"):
            prefix = self._path(kind, key) + "/"
            sizes = {name[len(prefix):]: info["size"]
                     for name, info in self.fs.find(self._path(kind, key), detail=True).items()}
            for rel, meta in sorted(record["files"].items()):
                if rel not in sizes:
                    reason = f"{rel} is missing"
                elif sizes[rel] != meta["bytes"]:
                    reason = f"{rel}: {sizes[rel]} bytes, marker says {meta['bytes']}"
                if reason:
                    break
        return _Check(reason=reason, blob=blob, record=record)

    @staticmethod
    def _check_dir(directory: Path, key: str, deep: bool) -> _Check:
        try:
            blob = (directory / MARKER).read_bytes()
        except FileNotFoundError:
            # on a path a unit folder appears whole by rename: a folder without its marker lost it
            return _Check(reason=f"{MARKER} is missing") if directory.is_dir() else _Check(missing=True)
        except OSError as exc:
            return _Check(reason=f"{MARKER} cannot be read ({exc.strerror or exc})")
        record, reason = _parse_marker(blob, key)
        if reason is None:
            reason = _check_files(directory, record.get("files") or {}, deep)  # none listed: an older unit
        return _Check(reason=reason, blob=blob, record=record)

    def is_done(self, kind: str, key: str) -> bool:
        """The unit is finished and looks intact: its marker parses and every file has its recorded size.
        Cheap (no hashing) for the driver's thousands of calls; a damaged unit is not done."""
        return self._check(kind, key).intact

    def verify(self, kind: str, key: str, deep: bool = True) -> str | None:
        """Why a finished unit is damaged ("outputs.npz: 1234 bytes, marker says 5678", "model.pt: sha256
        mismatch ...", "unit.json is not valid JSON ..."); None if it is intact, or not there at all.
        `deep` hashes every file (on a bucket: downloads it; an intact copy stays in this node's cache)."""
        check = self._check(kind, key, deep=deep and not self.remote)
        if not self.remote or not deep or not check.intact:
            return check.reason
        local = self.local_root / kind / key
        if (local / MARKER).is_file() and self._check_dir(local, key, deep=True).intact \
                and (local / MARKER).read_bytes() == check.blob:
            return None
        shutil.rmtree(local, ignore_errors=True)
        return self._download(kind, key, check)[1]

    def _note_input(self, kind: str, key: str, blob: bytes) -> None:
        """Inside `writing`: remember the checksum of an input's marker, for the output's marker."""
        for inputs in getattr(self._reading, "stack", []):
            inputs[f"{kind}/{key}"] = hashlib.sha256(blob).hexdigest()

    def _refuse(self, kind: str, key: str, check: _Check) -> NoReturn:
        """A reader's answer to a unit that is not intact: DamagedUnit (set aside first), or not there."""
        if not check.missing:
            raise DamagedUnit(kind, key, check.reason, self.set_aside(kind, key))
        aside = self.set_aside_copies(kind, key)
        if aside:  # moved aside by another reader since this one's caller saw it finished
            raise DamagedUnit(kind, key, "found damaged and moved aside by another process; recompute it", aside[-1])
        raise SegleakError(f"unit {key} is not in the results store {self.root}")

    def finished(self, kind: str, key: str) -> dict[str, Any] | None:
        """A finished unit's marker after the cheap check, None if it is not there; a damaged one is set aside
        (DamagedUnit). One read of the marker, where `is_done` then `read_unit` take two."""
        check = self._check(kind, key)
        if check.missing:
            return None
        if check.reason is not None:
            raise DamagedUnit(kind, key, check.reason, self.set_aside(kind, key))
        self._note_input(kind, key, check.blob)
        return check.record

    def read_unit(self, kind: str, key: str) -> dict[str, Any]:
        """A finished unit's marker (config, summary, ...), after the cheap check of its files."""
        check = self._check(kind, key)
        if not check.intact:
            self._refuse(kind, key, check)
        self._note_input(kind, key, check.blob)
        return check.record

    def local_dir(self, kind: str, key: str) -> Path:
        """A finished unit's files on local disk, every file checked against its marker's sha256: the unit
        folder itself, or a verified download of it. Raises DamagedUnit when they do not match."""
        final = self.local_root / kind / key
        if not self.remote:
            check = self._check_dir(final, key, deep=True)
            if not check.intact:
                self._refuse(kind, key, check)
            self._note_input(kind, key, check.blob)
            return final
        if (final / MARKER).is_file():
            check = self._check_dir(final, key, deep=True)
            if check.intact:
                self._note_input(kind, key, check.blob)
                return final
            shutil.rmtree(final, ignore_errors=True)  # this node's copy went bad: fetch the bucket's again
        check = self._check(kind, key)
        if not check.intact:
            self._refuse(kind, key, check)
        path, reason = self._download(kind, key, check)
        if reason:
            self._refuse(kind, key, _Check(reason=reason))
        self._note_input(kind, key, check.blob)
        return path

    def _download(self, kind: str, key: str, check: _Check) -> tuple[Path | None, str | None]:
        """Fetch a unit from the bucket into this node's cache: (its folder, None), or (None, why it is damaged)."""
        final = self.local_root / kind / key
        listed = sorted((check.record or {}).get("files") or {})
        if listed:  # only what the marker lists: leftovers of an earlier, interrupted upload stay behind
            remote_files = [self._path(kind, key, rel) for rel in [*listed, MARKER]]
        else:
            remote_files = self.fs.find(self._path(kind, key))
        tmp = self._temp_dir(final)
        try:
            prefix = len(self._path(kind, key)) + 1
            local_files = [str(tmp / name[prefix:]) for name in remote_files]
            for path in local_files:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(remote_files, local_files)
            downloaded = self._check_dir(tmp, key, deep=True)
            if not downloaded.intact:
                return None, downloaded.reason or f"{MARKER} is missing"
            self._install(tmp, final)
            return final, None
        finally:
            self._drop_temp(tmp)

    # -----------------------------------------------------------------------------------------------------
    # damaged units: moved aside, never deleted

    def set_aside_copies(self, kind: str, key: str) -> list[str]:
        """Where earlier damaged copies of a unit were moved, oldest first."""
        if self.remote:
            return sorted(self.fs.unstrip_protocol(p) for p in self.fs.glob(self._path(DAMAGED, kind, f"{key}-*")))
        return sorted(str(p) for p in (self.local_root / DAMAGED / kind).glob(f"{key}-*"))

    def set_aside(self, kind: str, key: str) -> str | None:
        """Move a damaged unit to `<root>/damaged/<kind>/<key>-<time>/` with a note saying why; returns
        where. Done under the unit's lock, after a full check: None if someone is recomputing it right
        now, or it is intact (recomputed meanwhile) or gone."""
        token = self._try_lock(kind, key)
        if token is None:
            return None
        try:
            current = self.verify(kind, key, deep=True)  # on a bucket: a download, as a reader's was
            return None if current is None else self._move_aside(kind, key, current)
        finally:
            self._unlock(kind, key, token)

    def _move_aside(self, kind: str, key: str, reason: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:4]}"
        note = json.dumps({"kind": kind, "key": key, "reason": reason, "time": time.time(), "host": HOST,
                           "pid": os.getpid(), "invocation": self.invocation}, indent=1).encode()
        if not self.remote:
            dest = self.local_root / DAMAGED / kind / f"{key}-{stamp}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.local_root / kind / key, dest)
            (dest / DAMAGED_NOTE).write_bytes(note)
            return str(dest)
        src, dest = self._path(kind, key), self._path(DAMAGED, kind, f"{key}-{stamp}")
        names = self.fs.find(src)
        for name in names:
            self.fs.copy(name, dest + name[len(src):])
        self.fs.pipe_file(f"{dest}/{DAMAGED_NOTE}", note)
        marker = self._path(kind, key, MARKER)
        if marker in names:  # the unit stops being finished before its files go
            self.fs.rm_file(marker)
        rest = [n for n in names if n != marker]
        if rest:
            self.fs.rm(rest)
        shutil.rmtree(self.local_root / kind / key, ignore_errors=True)  # this node's cached copy
        return self.fs.unstrip_protocol(dest)

    # -----------------------------------------------------------------------------------------------------
    # locks: one owner computes a unit; the others wait for it

    def _temp_dir(self, final: Path) -> Path:
        """A private temp dir beside `final`, named after its owner, its lease refreshed while it exists."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / temp_name(final.name)
        tmp.mkdir()
        _HEARTBEAT.add(str(tmp), lambda: os.utime(tmp), every=max(0.05, min(30.0, self.lease_s / 4)))
        return tmp

    @staticmethod
    def _drop_temp(tmp: Path) -> None:
        _HEARTBEAT.remove(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)

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
        """Every file of a finished unit, sizes checked, then its marker: the marker's upload commits the unit."""
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.relative_to(tmp).as_posix() != MARKER)
        if files:
            targets = [self._path(kind, key, p.relative_to(tmp).as_posix()) for p in files]
            self.fs.put([str(p) for p in files], targets)
            sizes = {name: info["size"] for name, info in self.fs.find(self._path(kind, key), detail=True).items()}
            for path, target in zip(files, targets):
                if sizes.get(target) != path.stat().st_size:
                    raise OSError(f"upload of {target}: {sizes.get(target)} bytes arrived of {path.stat().st_size}")
        self.fs.put_file(str(tmp / MARKER), self._path(kind, key, MARKER))

    def _publish(self, tmp: Path, final: Path, kind: str, key: str) -> bool:
        """Make a complete temp dir the unit; False if an identical computation was published first."""
        if self.remote:
            if self.is_done(kind, key):
                return False
            self._upload(tmp, kind, key)
            self._install(tmp, final)  # a local copy for this node's readers
            return True
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            check = self._check_dir(final, key, deep=False)
            if check.missing:
                raise
            if check.intact:
                return False
        self._move_aside(kind, key, check.reason)  # a damaged copy (when writing without `claim`)
        os.rename(tmp, final)
        return True

    @contextlib.contextmanager
    def writing(self, kind: str, key: str, config: dict[str, Any]) -> Iterator[Path]:
        """Yield a local temp dir to fill; on success write the marker (with checksums of every file and of
        the inputs read meanwhile) and publish it under its key. Every completed computation adds a ledger
        event. Hold `claim` around it so that concurrent invocations compute the unit once."""
        final = self.local_root / kind / key
        tmp = self._temp_dir(final)
        started = time.time()
        inputs: dict[str, str] = {}
        stack = self._reading.__dict__.setdefault("stack", [])
        stack.append(inputs)
        try:
            yield tmp
            if stack and stack[-1] is inputs:
                stack.pop()
            summary_path = tmp / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            files = {p.relative_to(tmp).as_posix(): {"sha256": _sha256_file(p), "bytes": p.stat().st_size}
                     for p in sorted(tmp.rglob("*")) if p.is_file() and p.relative_to(tmp).as_posix() != MARKER}
            record = _seal({"kind": kind, "key": key, "config": config, "summary": summary,
                            "started": round(started, 3), "seconds": round(time.time() - started, 3),
                            "host": HOST, "pid": os.getpid(),
                            "invocation": self.invocation, "files": files, "inputs": inputs})
            (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True))
            # on a path the rename publishes; on a bucket the marker's upload does
            published = self._publish(tmp, final, kind, key)
            self.append_ledger({k: record[k] for k in ("kind", "key", "seconds", "host", "pid", "invocation")}
                               | {"published": published})
        except DiskFull as full:  # a file of the unit that did not fit: named at the unit's place
            raise DiskFull(full.path.replace(str(tmp), str(final), 1), full.free) from full.__cause__
        except Exception as exc:
            raise_if_disk_full(exc, tmp, final)  # measured now (removing the temp dir frees the space), named
            raise                                # by the unit's place, not its temp dir
        finally:
            if stack and stack[-1] is inputs:
                stack.pop()
            self._drop_temp(tmp)

    def _write_bytes(self, relative: str, data: bytes) -> None:
        """One file, visible whole or not at all: an object PUT on a bucket, temp file + rename on a path."""
        path = self._path(relative)
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(temp_name(target.name))
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def _temp_owner_gone(self, entry: Path) -> bool:
        try:
            age = time.time() - entry.lstat().st_mtime
        except FileNotFoundError:
            return False
        owner = _owner_in_name(entry.name)
        alive = owner_alive(*owner) if owner else None
        # another host's (or a name without an owner, from an older version): only its lease can tell
        return alive is False or (alive is None and age > self.lease_s)

    def _sweep(self, folder: Path, pattern: str) -> int:
        removed = 0
        for entry in list(folder.glob(pattern)):
            if self._temp_owner_gone(entry):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def sweep_stale(self, older_than_s: float = 0.0) -> int:
        """Remove temp dirs and files, and locks, whose owner is gone: a process on this host that is dead,
        or on another host whose lease expired. Another invocation's work in progress is left alone, so
        this is safe at any time. On a bucket nothing partial is visible without its marker: only the local
        mirror is swept (stale locks in a bucket are taken over by the next process that needs the unit)."""
        removed = 0
        # unit temp dirs sit in their kind's folder; the report's staging folder sits at the root
        for entry in [*self.local_root.glob(f"*/{TEMP_PREFIX}*"), *self.local_root.glob(f"{TEMP_PREFIX}*")]:
            try:
                young = time.time() - entry.lstat().st_mtime < older_than_s
            except FileNotFoundError:
                continue
            if not young and self._temp_owner_gone(entry):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed += 1
        if not self.remote:
            for lock in list(self.local_root.glob(f"*/{LOCK_PREFIX}*")):
                record, mtime = self._read_lock(str(lock))
                breaking = lock.name.endswith(BREAK_SUFFIX)
                if record is None or self._stale(record, mtime, BREAK_LEASE_S if breaking else None) is None:
                    continue
                if breaking:
                    self._remove(str(lock), record.get("token"))
                    removed += 1
                elif self._break(str(lock), record):
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
