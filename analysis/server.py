"""A real `mlflow server` as a context manager: UI and REST API for any backend store (SQLite, PostgreSQL).

The server runs in its own process group and is stopped by signalling the whole group, because stopping
only its PID leaves worker children behind (seen with MLflow 3.17). The job runner is disabled for the same reason.
The server gets SIGTERM from the kernel when the thread that started it dies (prctl PR_SET_PDEATHSIG), so a
`kill -9` of `segleak ui` does not leave it holding the port; `mlflow server` forwards the signal to uvicorn.
A stop signal that arrives while the server is being spawned is held until its process is recorded, so the
caller's handler can always stop it. Messages show the store URI with its password masked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from benchmark.errors import SegleakError
from benchmark.redact import redact

if TYPE_CHECKING:
    from typing_extensions import Self

HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the forked child before exec: SIGTERM when the parent goes, however it goes (also SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = HOST) -> int:
    """A port the OS says is free right now on `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something listens on the port (connections in TIME_WAIT do not count, as for the server)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP for the block, then deliver the first one that came to the previous handler.

    Popen runs Python code after forking; a handler raising there would lose the child's PID and leave the
    server running. Only the main thread can set handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


def default_artifacts(backend_store_uri: str) -> Path:
    """Artifacts next to a SQLite database; elsewhere (a database server) in ./mlartifacts."""
    if backend_store_uri.startswith("sqlite:///"):
        return Path(backend_store_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return Path.cwd() / "mlartifacts"


class TrackingServer:
    """`with TrackingServer(uri) as server:` -> `server.url` answers /health until the block ends."""

    def __init__(self, backend_store_uri: str, port: int | None = None, artifacts_destination: Path | None = None,
                 workers: int = 1, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.backend_store_uri = backend_store_uri
        self.port = port or free_port()
        self.artifacts_destination = artifacts_destination or default_artifacts(backend_store_uri)
        self.workers = workers
        self.start_timeout_s = start_timeout_s
        self.url = f"http://{HOST}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's log lives until stop() closes it

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(self.port),
            "--workers", str(self.workers), "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", str(self.artifacts_destination),
        ]

    def start(self) -> TrackingServer:
        """Start the server and wait for /health; a server that dies or never answers raises SegleakError.

        Whatever ends the wait early (an error, Ctrl-C, a signal handler's exception) stops the server's group
        first: `with` calls stop() only once start() has returned.
        """
        if port_in_use(self.port):
            raise SegleakError(f"port {self.port} on {HOST} is in use: choose another with --port")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        try:
            with _stop_signals_held():
                self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True,
                                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SegleakError(f"mlflow server for {redact(self.backend_store_uri)} exited with "
                                       f"{self.process.returncode}: {self.log_tail()}")
                if self.healthy():
                    return self
                time.sleep(0.5)
            raise SegleakError(f"mlflow server for {redact(self.backend_store_uri)} did not answer on {self.url} within "
                               f"{self.start_timeout_s:.0f} s: {self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's output, URI passwords masked ('' once stopped)."""
        if self._log.closed:
            return ""
        self._log.seek(0)
        return redact(self._log.read().decode(errors="replace")[-chars:].strip())

    def group_alive(self) -> bool:
        """Whether any process of the server's process group is still running."""
        if self.process is None:
            return False
        self.process.poll()  # reap the leader if it has exited, so it does not count as alive
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after STOP_TIMEOUT_S."""
        if self.process is None:
            return
        with _stop_signals_held():  # a second Ctrl-C waits until the group is gone
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while self.group_alive() and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not self.group_alive():
                    break
            self._log.close()

    def wait(self) -> int:
        """Block until the server exits by itself (used by `segleak ui`)."""
        assert self.process is not None, "start() first"
        return self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
