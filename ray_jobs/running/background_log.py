"""MLflow logging of finished units in a child process, so that the driver's loop never waits on it.

Logging one unit's run costs 13-25 ms of CPU (three MLflow calls; on SQLite the SQL and the commits run in
the caller, through a server the HTTP client) and a cell also draws its ROC curve: done on the driver,
that caps it at a few dozen finished units per second, below what a cluster of hundreds of GPUs finishes
in the cell stage (`make bench`, driver section). Here the driver hands each event (the unit and its
summary) to one child process, which costs it a pickle; the child logs the events in order with a tracker
attached to the invocation's parent run. One child: SQLite keeps a single writer, and the driver writes to
MLflow only before the child starts and after it has finished (`close`).

The child is `python -m ray_jobs.running.background_log` fed pickles on its stdin and answering on its stdout (its
own prints go to stderr), not a `multiprocessing` child: spawning one re-imports the caller's main script,
which breaks a user's unguarded script calling `run_benchmark`. It has its own session, so Ctrl-C reaches
the driver alone, which stops it; it also ends when its stdin closes (the driver died).

`flush` waits until everything handed over so far is logged and returns the errors the child met, such as
`DamagedUnit` (a finished cell's scores damaged on disk), so the scheduler can still recompute those.
An MLflow or OS error is the tracking store failing (mlflow.db deleted, locked, a full disk): the child
answers it once, in one line, and logs nothing more (the results are in the store; the next invocation
logs their runs), instead of one multi-line SQL error per remaining unit.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from benchmark.errors import SegleakError
from benchmark.paths import project_root
from benchmark.redact import redact

if TYPE_CHECKING:
    from ray_jobs.recording.tracking import Tracker
    from ray_jobs.units.base import Unit

POLL_S = 1.0  # how often a waiting driver checks that the child is still alive
PROJECT_ROOT = str(project_root())


def _picklable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (DamagedUnit does), else its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def store_fault(exc: BaseException, unit_key: str) -> RuntimeError:
    """One line for a tracking store that failed: MLflow's message holds the SQL and its parameters; the
    driver error's own line (`(sqlite3.OperationalError) no such table: runs`) is what says why."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = next((line for line in lines if line.startswith("(") and "Error)" in line), lines[0] if lines else "")
    return RuntimeError(redact(f"the MLflow store failed logging unit {unit_key}: {type(exc).__name__}: {why}"[:600]
                               + "; later units are not logged by this invocation (their results are kept, "
                               "the next invocation logs them)"))


def serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    """The child's loop: a (tracker args, store args) pickle, then (op, unit, payload) events until None."""
    from mlflow.exceptions import MlflowException

    from ray_jobs.recording.store import ResultStore
    from ray_jobs.recording.tracking import Tracker
    from ray_jobs.units import UNIT_KINDS

    tracker_args, store_args = pickle.load(inbox)
    store = ResultStore(store_args[0], invocation=store_args[1])
    tracker = Tracker.attach(*tracker_args, locks=store)
    kinds: dict[str, Any] = {}
    failed = False  # the store failed once: nothing more is sent to it

    def answer(message: tuple) -> None:
        pickle.dump(message, outbox)
        outbox.flush()

    while True:
        try:
            item = pickle.load(inbox)
        except EOFError:  # the driver is gone
            return
        if item is None:
            return
        op, unit, payload = item
        if op == "flush":
            answer(("flushed", None, payload))
            continue
        if failed:
            continue
        try:
            kind = kinds.setdefault(unit.kind, UNIT_KINDS.lookup(unit.kind)())
            if op == "done":
                tracker.log_unit(kind, unit, payload, store)
            else:
                kind.log_failure(tracker, unit, payload)
        except (MlflowException, OSError) as exc:  # the store failed (DamagedUnit is no OSError): said once
            failed = True
            answer(("error", unit.key, store_fault(exc, unit.key)))
        except Exception as exc:  # noqa: BLE001 - handed back to the driver, which decides
            answer(("error", unit.key, _picklable(exc)))


class BackgroundLogger:
    """`log_done` / `log_failed` hand a unit's event to the child; `flush` waits for them; `close` ends it.

    Two threads of the driver move the pickles, so a child that lags never blocks the scheduler."""

    def __init__(self, tracker: Tracker, store_root: str, invocation: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)}
        # a server's client otherwise prints two lines per run, and fetches the run again to write them
        env.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._process = subprocess.Popen([sys.executable, "-m", "ray_jobs.running.background_log"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env, start_new_session=True)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox.put(((tracker.uri, tracker.experiment_id, tracker.parent_id), (store_root, invocation)))
        threading.Thread(target=self._feed, name="segleak-mlflow-feed", daemon=True).start()
        threading.Thread(target=self._read, name="segleak-mlflow-read", daemon=True).start()
        self._flushes = 0
        self._closed = False

    def _feed(self) -> None:
        stdin = self._process.stdin
        try:
            while True:
                item = self._inbox.get()
                pickle.dump(item, stdin, protocol=pickle.HIGHEST_PROTOCOL)
                stdin.flush()
                if item is None:
                    break
        except (BrokenPipeError, OSError, ValueError):  # the child died; `flush` says so
            pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _read(self) -> None:
        try:
            while True:
                self._outbox.put(pickle.load(self._process.stdout))
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            self._outbox.put(("exited", None, None))

    def log_done(self, unit: Unit, summary: dict[str, Any]) -> None:
        self._inbox.put(("done", unit, summary))

    def log_failed(self, unit: Unit, error: str) -> None:
        self._inbox.put(("failed", unit, error))

    def flush(self, timeout_s: float | None = None) -> list[tuple[str, BaseException]]:
        """Wait until every event handed over so far is logged; the (unit key, error) pairs met meanwhile.
        TimeoutError after `timeout_s` (the child goes on logging)."""
        if self._closed:
            return []
        self._flushes += 1
        token = self._flushes
        self._inbox.put(("flush", None, token))
        errors = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                what, key, value = self._outbox.get(timeout=POLL_S)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"MLflow logging not finished after {timeout_s:.0f} s") from None
                continue
            if what == "flushed" and value == token:
                return errors
            if what == "error":
                errors.append((key, value))
            elif what == "exited":
                self._closed = True
                code = self._process.wait()
                raise SegleakError(f"the MLflow logging process exited with code {code} before logging every "
                                   "finished unit (its error is above); the next invocation logs them")

    def close(self, timeout_s: float = 60.0) -> list[tuple[str, BaseException]]:
        """Log what is left, stop the child and return the errors it met since the last flush."""
        if self._closed:
            return []
        errors = self.flush()
        self._inbox.put(None)
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:  # cannot happen after a flush unless MLflow hangs: do not hang too
            self._process.kill()
            self._process.wait()
        self._closed = True
        return errors

    def kill(self) -> None:
        """Stop the child now, dropping what it has not logged (the driver is failing anyway)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._closed = True


def main() -> None:
    """The child's entry point; prints of MLflow and friends go to stderr, stdout carries the answers."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
