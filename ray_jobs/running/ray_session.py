"""Ray's leftovers on this machine: the session folder each local Ray instance writes under Ray's temporary
directory (logs, sockets; a few MB each, never removed by Ray), and after a SIGKILL of the driver the
processes that outlive it (the dashboard and runtime-env agents, re-parented to init, and idle workers).

A driver marks the session it started (`mark_session`) with its owner (host id, pid, start time, as the
store's locks do) and removes the folder after a clean `ray.shutdown()`. What a killed driver could not
remove, the next invocation does (`sweep_sessions`): a marked session whose driver is provably gone and
whose GCS server and raylet are gone too has its remaining processes terminated and its folder deleted.
Unmarked sessions (someone else's Ray) and sessions whose driver runs on another host are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from ray_jobs.recording.store import current_owner, owner_alive

MARK = "segleak-driver.json"
CORE = ("gcs_server", "raylet")  # a session with one of these alive is in use
GRACE_S = 5.0


def ray_temp_dir() -> Path:
    """Where local Ray instances put their session folders ($RAY_TMPDIR, $TMPDIR, or /tmp, then `ray`)."""
    from ray._common.utils import get_default_ray_temp_dir

    return Path(get_default_ray_temp_dir())


def current_session() -> Path | None:
    """The session folder of the Ray instance this process started or joined, None without one."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_session_dir_path()) if node is not None else None


def mark_session(session: Path) -> None:
    """Record this process as the session's driver (so a later invocation can tell when it is gone)."""
    host_id, pid, start = current_owner()
    (session / MARK).write_text(json.dumps({"host_id": host_id, "pid": pid, "start": start}))


def remove_session(session: Path) -> None:
    """Delete a session folder once its Ray instance has shut down."""
    shutil.rmtree(session, ignore_errors=True)


def holders(session: Path) -> list[tuple[int, str]]:
    """(pid, name) of the processes whose command line or open files point into the session folder."""
    prefix = f"{session}{os.sep}"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = (entry / "comm").read_text().strip()
            holds = str(session) in cmdline
            if not holds:
                for fd in (entry / "fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd).startswith(prefix):
                            holds = True
                            break
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
        if holds:
            found.append((int(entry.name), name))
    return found


def _terminate(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL whatever is left after GRACE_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                alive.append(pid)
        deadline = time.monotonic() + GRACE_S
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
            time.sleep(0.1)
        pids = alive
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def sweep_sessions(temp_dir: Path | None = None) -> tuple[int, int]:
    """Terminate the processes of, and delete, every marked session whose driver is gone and whose GCS server
    and raylet are gone too. Returns (processes terminated, folders removed)."""
    root = temp_dir or ray_temp_dir()
    if not Path("/proc/self").exists() or not root.is_dir():
        return 0, 0
    killed = removed = 0
    for session in sorted(root.glob("session_*")):
        if session.is_symlink() or not (session / MARK).is_file():
            continue
        try:
            record = json.loads((session / MARK).read_text())
        except (OSError, ValueError):
            continue
        if owner_alive(record.get("host_id"), record.get("pid"), record.get("start")) is not False:
            continue
        left = holders(session)
        if any(name in CORE for _, name in left):
            continue
        _terminate([pid for pid, _ in left])
        killed += len(left)
        remove_session(session)
        removed += 1
    latest = root / "session_latest"
    if latest.is_symlink() and not latest.exists():
        latest.unlink(missing_ok=True)
    return killed, removed
