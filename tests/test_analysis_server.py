"""The real MLflow server on a free loopback port: runs go in through it, the REST API finds them, and
stopping it (the context manager, or `segleak ui` receiving a stop signal) leaves no process of its group behind."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from analysis.server import TrackingServer, free_port, port_in_use
from benchmark.errors import SegleakError


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def test_server_logs_serves_and_stops_its_whole_group(tmp_path: Path) -> None:
    server = TrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts_destination=tmp_path / "artifacts")
    previous = mlflow.get_tracking_uri()
    with server:
        assert server.url.startswith("http://127.0.0.1:")
        pgid = os.getpgid(server.process.pid)
        assert pgid == server.process.pid  # its own group, so stopping it cannot miss a child
        mlflow.set_tracking_uri(server.url)
        try:
            experiment_id = mlflow.create_experiment("segleak-server-test")
            with mlflow.start_run(experiment_id=experiment_id, tags={"segleak.kind": "invocation"}) as run:
                mlflow.log_param("profile", "smoke")
                mlflow.log_metric("auc", 0.75)
                (tmp_path / "note.txt").write_text("hello")
                mlflow.log_artifact(str(tmp_path / "note.txt"))
        finally:
            mlflow.set_tracking_uri(previous)
        found = _post(f"{server.url}/api/2.0/mlflow/runs/search",
                      {"experiment_ids": [experiment_id], "max_results": 10})
        assert [r["info"]["run_id"] for r in found["runs"]] == [run.info.run_id]
        assert {m["key"]: m["value"] for m in found["runs"][0]["data"]["metrics"]} == {"auc": 0.75}
        assert list((tmp_path / "artifacts").rglob("note.txt")), "artifacts go to --artifacts-destination"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not port_in_use(int(server.url.rsplit(":", 1)[1]))


def test_server_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = TrackingServer(f"sqlite:///{tmp_path / 'mlflow.db'}", port=busy.getsockname()[1])
        with pytest.raises(SegleakError, match="in use"):
            server.start()


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, process group) of a live process, from /proc; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2])


def _processes() -> dict[int, tuple[int, int]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(entry.name)) is not None:
            out[int(entry.name)] = stat
    return out


def _group(pgid: int) -> list[str]:
    """Command lines of the live (not zombie) processes in a process group."""
    members = []
    for pid, (_, group) in _processes().items():
        if group == pgid:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if state != "Z":
                members.append(f"{pid}: {cmdline}")
    return members


def _wait_healthy(url: str, cli: subprocess.Popen[str], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cli.poll() is not None:
            raise AssertionError(f"segleak ui exited with {cli.returncode}: {cli.communicate()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"segleak ui did not answer on {url} within {timeout_s:.0f} s")


def test_ui_stopped_by_sigterm_stops_its_server_group(tmp_path: Path) -> None:
    """`kill`, systemd and `docker stop` send SIGTERM: the UI's mlflow server and uvicorn workers go with it."""
    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    cli = subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}", "--port", str(port)],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    server_groups: set[int] = set()
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", cli)
        assert select.select([cli.stdout], [], [], 60)[0], "no start line"
        assert f"at http://127.0.0.1:{port}" in cli.stdout.readline()  # serving: the signal handlers are in place
        server_groups = {group for pid, (parent, group) in _processes().items() if parent == cli.pid and group != cli.pid}
        assert len(server_groups) == 1, "the mlflow server runs in a process group of its own"
        (pgid,) = server_groups
        assert any("mlflow" in m for m in _group(pgid)), _group(pgid)
        cli.send_signal(signal.SIGTERM)  # the CLI's PID only, as `kill PID` does
        out, err = cli.communicate(timeout=90)
        assert cli.returncode == 128 + signal.SIGTERM, (cli.returncode, out, err)
        assert "SIGTERM" in err and "Traceback" not in err, err
        assert _group(pgid) == [], "mlflow/uvicorn processes outlived segleak ui"
        assert not port_in_use(port)
    finally:
        for pgid in server_groups | {cli.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if cli.poll() is None:
            cli.kill()
            cli.communicate()


class _FakeServer:
    """Stands in for TrackingServer: a signal arrives while the UI waits."""

    instances: list[_FakeServer] = []
    signum = 0  # the signal that wait() raises; each test sets it

    def __init__(self, uri: str, port: int) -> None:
        self.url, self.stopped = f"http://127.0.0.1:{port}", 0
        _FakeServer.instances.append(self)

    def start(self) -> _FakeServer:
        return self

    def wait(self) -> int:
        signal.raise_signal(self.signum)
        raise AssertionError("the signal should have ended the wait")

    def log_tail(self) -> str:
        return ""

    def stop(self) -> None:
        self.stopped += 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_ui_maps_every_stop_signal_to_128_plus_its_number(signum: int, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import analysis.ui as ui

    monkeypatch.setattr(_FakeServer, "instances", [])
    monkeypatch.setattr(ui, "TrackingServer", _FakeServer)
    monkeypatch.setattr(_FakeServer, "signum", signum)
    before = {sig: signal.getsignal(sig) for sig in ui.STOP_SIGNALS}
    assert ui.serve_ui("postgresql://mlflow:hunter2@db/mlflow", port=5999) == 128 + signum
    assert [s.stopped for s in _FakeServer.instances] == [1]
    assert {sig: signal.getsignal(sig) for sig in ui.STOP_SIGNALS} == before  # handlers restored
    out, err = capsys.readouterr()
    assert "hunter2" not in out + err and "mlflow:***@db" in out and signal.Signals(signum).name in err


def test_a_stop_signal_during_spawn_is_held_until_the_block_ends() -> None:
    from analysis.server import _stop_signals_held

    class Boom(Exception):
        pass

    def boom(signum: int, _frame: object) -> None:
        raise Boom(signum)

    previous = signal.signal(signal.SIGTERM, boom)
    steps = []
    try:
        with pytest.raises(Boom):
            with _stop_signals_held():
                signal.raise_signal(signal.SIGTERM)
                steps.append("after the signal")  # still runs: the PID would be recorded here
        assert steps == ["after the signal"]
        assert signal.getsignal(signal.SIGTERM) is boom
    finally:
        signal.signal(signal.SIGTERM, previous)
