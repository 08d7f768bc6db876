"""Who owns what in a shared results folder: a process is (host id, pid, start time), and liveness is only
decidable on its own host. Temp dirs and files carry their owner in their name (`.tmp-<name>@<host>.<pid>.
<start>.<random>`), so a sweep removes only what a gone process left; a heartbeat thread refreshes the leases
of the locks this process holds."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

TEMP_PREFIX = ".tmp-"

def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


HOST = socket.gethostname()
# the boot id tells two machines with one hostname (and a rebooted one) apart
HOST_ID = hashlib.sha256(f"{HOST}/{_read_text('/proc/sys/kernel/random/boot_id')}".encode()).hexdigest()[:8]
_HAVE_PROC = Path("/proc/self/stat").exists()


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a running process (clock ticks since boot); None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def current_owner() -> tuple[str, int, str]:
    pid = os.getpid()
    return HOST_ID, pid, (_process_start(pid) or "0") if _HAVE_PROC else "0"


def owner_alive(host_id: Any, pid: Any, start: Any) -> bool | None:
    """Whether a process is running: True/False for one on this host, None for another host's."""
    if host_id != HOST_ID:
        return None
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return None
    if _HAVE_PROC:
        return _process_start(pid) == str(start)  # a reused pid has another start time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(name: str) -> str:
    """A private name beside `name` that carries its owner (see `sweep_stale`)."""
    host_id, pid, start = current_owner()
    return f"{TEMP_PREFIX}{name}@{host_id}.{pid}.{start}.{uuid.uuid4().hex[:8]}"


def _owner_in_name(name: str) -> tuple[str, int, str] | None:
    _, sep, tag = name.rpartition("@")
    parts = tag.split(".")
    if not sep or len(parts) != 4 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


class _Heartbeat:
    """One daemon thread per process refreshing the leases of what the process owns (locks, temp dirs):
    processes on other hosts cannot check our pid, they go by how recent the lease is."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Callable[[], None], float, float]] = {}
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, touch: Callable[[], None], every: float) -> None:
        with self._mutex:
            self._items[name] = (touch, every, time.monotonic() + every)
            if self._thread is None or not self._thread.is_alive():  # none yet, or lost in a fork
                self._thread = threading.Thread(target=self._run, name="segleak-lease", daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, name: str) -> None:
        with self._mutex:
            self._items.pop(name, None)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._mutex:
                due = [(name, item) for name, item in self._items.items() if item[2] <= now]
                for name, (touch, every, _) in due:
                    self._items[name] = (touch, every, now + every)
            for _, (touch, _, _) in due:
                try:
                    touch()
                except Exception:  # noqa: BLE001 - a missed refresh is retried; the lease is generous
                    pass
            with self._mutex:
                wake = min((item[2] for item in self._items.values()), default=now + 1.0)
            self._wake.wait(min(1.0, max(0.05, wake - time.monotonic())))
            self._wake.clear()


_HEARTBEAT = _Heartbeat()
