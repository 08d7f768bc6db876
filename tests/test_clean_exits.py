"""Clean exits (issue 18): stop signals like Ctrl-C in every command, one line for any error, a full disk that
leaves the report whole, and Ray's leftovers of a killed driver removed by the next run."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.failure import LOW_SPACE_BYTES, DiskFull, one_line
from benchmark.signals import Stopped, rearm, stop_on_signals
from ray_jobs.recording.store import HOST_ID, _process_start
from ray_jobs.running.ray_session import MARK, mark_session, sweep_sessions


def test_sigterm_and_sighup_raise_stopped_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        with pytest.raises(Stopped) as stopped, stop_on_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler's exception ends the sleep
        assert stopped.value.exit_code == code and isinstance(stopped.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before


def test_rearm_takes_sigterm_back_from_a_library_inside_the_block_only():
    def library_handler(signum, frame):  # as ray.init installs: exits without unwinding the caller's clean-up
        raise SystemExit(signum)

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        signal.signal(signal.SIGTERM, library_handler)
        rearm()
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    signal.signal(signal.SIGTERM, library_handler)
    try:
        rearm()  # no block open: a library caller's handlers are not touched
        assert signal.getsignal(signal.SIGTERM) is library_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_long_command_stopped_by_sigterm_exits_143_with_one_line(tmp_path, capsys):
    # a first, short run imports what the command needs: the signal must stop the work, not an import
    assert main(["data", "synth", "--layout", "cityscapes", "--out", str(tmp_path / "warm"), "--n-train", "1",
                 "--n-val", "1"]) == 0
    capsys.readouterr()
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:  # thousands of synthetic scenes: far longer than the timer
        code = main(["data", "synth", "--layout", "cityscapes", "--out", str(tmp_path / "d"), "--n-train", "20000"])
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert code == 143 and err == "segleak: stopped by SIGTERM\n"


def test_one_line_names_a_full_disk_and_cuts_library_dumps():
    full = OSError(errno.ENOSPC, "No space left on device", "/results/model/x/model.pt")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("logging failed") from exc
    except RuntimeError as wrapped:
        assert one_line(wrapped) == ("disk full at /results/model/x/model.pt: free some space and "
                                     "run again; finished units are kept")
    sql = Exception("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT INTO runs ...]\n" + "x\n" * 90)
    assert one_line(sql).startswith("disk full at the MLflow database: free some space")
    dump = ValueError("cannot reach postgresql://mlflow:s3cret@db:5432/mlflow\n" + "  File ...\n" * 90)
    assert one_line(dump) == "ValueError: cannot reach postgresql://mlflow:***@db:5432/mlflow"


# --- a real full disk: a small tmpfs (root only) ------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave_bytes: int) -> Path:
    """Fill the file system of `folder`, then free about `leave_bytes`."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler


def test_a_full_disk_leaves_the_previous_report_whole_and_says_so_in_one_line(small_disk, tmp_path):
    from ray_jobs.grid.spec import load_grid
    from ray_jobs.recording.store import ResultStore
    from ray_jobs.recording.tracking import Tracker
    from ray_jobs.running.reporting import Reporter, Summary
    from ray_jobs.units.base import Plan

    grid = load_grid("smoke", None)
    store = ResultStore(small_disk)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", grid.name, {}, artifact_root=str(tmp_path))
    reporter = Reporter(Plan(), store, tracker)
    old = small_disk / "report" / "leaderboard" / "leaderboard.md"
    old.parent.mkdir(parents=True)
    old.write_text("the previous report\n")
    filler = _fill(small_disk, 2048)
    with pytest.raises(DiskFull) as full:
        reporter.write_report(grid)
    assert full.value.path == str(small_disk / "report") and full.value.free < LOW_SPACE_BYTES
    assert old.read_text() == "the previous report\n" and sorted(os.listdir(small_disk)) == ["filler", "report"]
    out = io.StringIO()
    reporter.finish(grid, Summary(Plan().counts()), out)
    warning = [line for line in out.getvalue().splitlines() if "report" in line and "warning" in line]
    assert len(warning) == 1, out.getvalue()
    assert warning[0].startswith(f"warning: no report written (disk full at {small_disk / 'report'} (")
    assert "free some space and run again" in warning[0]
    assert warning[0].endswith("the runs are in MLflow, and `segleak leaderboard` / `segleak plots` write it later")
    assert old.read_text() == "the previous report\n"
    filler.unlink()
    written = reporter.write_report(grid)  # with space again: the new report replaces the old one whole
    assert not old.exists() or old.read_text() != "the previous report\n"
    assert all(Path(p).exists() and Path(p).is_relative_to(small_disk / "report") for p in written["leaderboard"])
    tracker.finish("FINISHED")


def test_a_benchmark_on_a_full_disk_ends_in_one_line(small_disk, tmp_path):
    _fill(small_disk, 4096)
    run = subprocess.run([sys.executable, "-m", "benchmark.cli", "benchmark", "--profile", "smoke", "--results",
                          str(small_disk)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("segleak: error: disk full at "), run.stderr[-3000:]


# --- Ray's leftovers --------------------------------------------------------------------------------------

def _dead_owner() -> dict:
    gone = subprocess.Popen(["sleep", "60"])
    start = _process_start(gone.pid)
    gone.kill()
    gone.wait()
    return {"host_id": HOST_ID, "pid": gone.pid, "start": start}


def _holding(session: Path, name: str = "sleep") -> subprocess.Popen:
    """A process (named `name`) with a log file open in the session folder, as Ray's agents have."""
    binary = session.parent / name
    if not binary.exists():
        shutil.copy(shutil.which("sleep"), binary)
    log = open(session / "logs" / f"{name}.out", "w")  # noqa: SIM115 - held by the child
    try:
        return subprocess.Popen([str(binary), "300"], stdout=log, stderr=log)
    finally:
        log.close()


def test_the_next_run_removes_a_killed_drivers_session_and_stops_what_it_left_behind(tmp_path):
    temp = tmp_path / "ray"
    sessions = {}
    for name in ("killed", "killed_raylet_alive", "live", "not_ours"):
        sessions[name] = temp / f"session_2026-01-01_00-00-00_{name}"
        (sessions[name] / "logs").mkdir(parents=True)
    dead = _dead_owner()
    for name in ("killed", "killed_raylet_alive"):
        (sessions[name] / MARK).write_text(json.dumps(dead))
    mark_session(sessions["live"])  # this process: alive
    orphan = _holding(sessions["killed"])  # an agent that outlived its driver
    raylet = _holding(sessions["killed_raylet_alive"], "raylet")  # a session still in use
    other = _holding(sessions["not_ours"])  # someone else's Ray: no mark
    (temp / "session_latest").symlink_to(sessions["killed"])
    try:
        assert sweep_sessions(temp) == (1, 1)
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert not sessions["killed"].exists() and not (temp / "session_latest").is_symlink()
        assert all(sessions[n].exists() for n in ("killed_raylet_alive", "live", "not_ours"))
        assert raylet.poll() is None and other.poll() is None
    finally:
        for proc in (orphan, raylet, other):
            proc.kill()
            proc.wait()
