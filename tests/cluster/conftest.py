"""Real services for the cluster tests: PostgreSQL, an MLflow server backed by it, a two-node Ray cluster.

Everything runs on loopback with free ports and temp dirs, so several engineers (and CI) can run these at
once on one machine. Teardown ends only the processes these fixtures started: each service is launched in
its own session and stopped by that session id, never by `ray stop` or a process name (which would also
stop other people's Ray or PostgreSQL).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from analysis.server import TrackingServer

PG_USER = "segleak"
PG_DB = "segleak"
MLFLOW_START_TIMEOUT_S = 180.0
RAY_OBJECT_STORE_BYTES = 150 * 1024 * 1024


def free_port() -> int:
    """A loopback port that was free a moment ago (good enough for a test service that binds right away)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of one session: all the daemons one `ray start` or server left behind."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.split("/")[2]))
    return pids


def stop_session(sid: int, grace_s: float = 15.0) -> None:
    """SIGTERM every process of the session, then SIGKILL what is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _session_pids(sid):
            return


# ---------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL server binaries (package `postgresql`), or None when not installed."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") if Path(p).with_name("initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def _as_pg_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` OS user the package creates."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL on a free loopback port; yields `postgresql://segleak@127.0.0.1:PORT/segleak`."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): apt-get install -y postgresql")
    # Not under pytest's tmp dir: that is mode 700 and owned by root, so the postgres user could not enter it.
    root = Path(tempfile.mkdtemp(prefix="segleak-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, sockets, port = root / "data", root / "sock", free_port()
    run = lambda cmd: subprocess.run(_as_pg_owner(cmd), check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(["mkdir", "-m", "700", str(sockets)])
    run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c full_page_writes=off"
    try:
        run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "-t", "60", "start"])
        run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB])
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_DB}"
    except subprocess.CalledProcessError as exc:
        log = root / "server.log"
        pytest.fail(f"PostgreSQL did not start: {exc.stderr}\n{log.read_text() if log.exists() else ''}")
    finally:
        subprocess.run(_as_pg_owner([str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast", "-w"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- MLflow tracking server


@pytest.fixture(scope="session")
def mlflow_pg_server(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """`mlflow server` with the PostgreSQL backend store and proxied artifacts in a temp dir, as on a cluster.

    The store URI names the driver: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, which is not
    installed (the project ships psycopg2-binary).
    """
    server = TrackingServer(
        postgres_server.replace("postgresql://", "postgresql+psycopg2://", 1),
        artifacts_destination=tmp_path_factory.mktemp("mlflow-artifacts"),
        start_timeout_s=MLFLOW_START_TIMEOUT_S,
    )
    with server:
        yield server


# ---------------------------------------------------------------- Ray


@dataclass(frozen=True)
class RayCluster:
    """A running multi-node Ray cluster on loopback: the address to pass to `ray.init` / `--address`."""

    address: str
    num_nodes: int


def _ray_start(args: list[str], env: dict[str, str]) -> int:
    """Run `ray start ...` in a new session and return that session id (its daemons inherit it)."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.Popen([ray_bin, "start", *args], env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        stop_session(proc.pid)
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-3000:]}")
    return proc.pid


@pytest.fixture(scope="session")
def ray_two_node_cluster() -> Iterator[RayCluster]:
    """A head and one worker node, each with 1 CPU, started with `ray start` as on bare machines.

    Both nodes share one Ray temp dir (Ray keeps one session dir per machine; the second `ray start` on the
    same host finds the head's). Token auth is off: the cluster listens on loopback only.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="segleak-ray-"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats", f"--object-store-memory={RAY_OBJECT_STORE_BYTES}"]
    sessions: list[int] = []
    try:
        sessions.append(
            _ray_start(
                ["--head", "--port", str(port), "--include-dashboard=false", "--dashboard-port", str(free_port()), "--temp-dir", str(temp_dir), *common],
                env,
            )
        )
        sessions.append(_ray_start(["--address", f"127.0.0.1:{port}", *common], env))
        yield RayCluster(address=f"127.0.0.1:{port}", num_nodes=2)
    finally:
        for sid in reversed(sessions):
            stop_session(sid)
        shutil.rmtree(temp_dir, ignore_errors=True)
