"""`segleak ui`: the MLflow UI for the results store, on the loopback interface only.

Stopping it the way people and service managers do (Ctrl-C, `kill`, `systemctl stop`, `docker stop`, a closed
terminal) stops the server's whole process group, so no `mlflow server` or uvicorn worker is left holding the
port. The exit code is 128 + the signal's number, as a shell reports a process the signal ended: 130 for
Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP.
"""

from __future__ import annotations

import signal
import sys
import threading

from analysis.server import STOP_SIGNALS, TrackingServer
from benchmark.redact import redact
from benchmark.signals import Stopped, raise_stopped


def serve_ui(tracking_uri: str, port: int = 5000) -> int:
    """Serve until a stop signal (128 + its number) or until the server dies (its exit code)."""
    server = TrackingServer(tracking_uri, port=port)
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = {sig: signal.signal(sig, raise_stopped) for sig in STOP_SIGNALS} if main else {}
    try:
        server.start()
        print(f"MLflow UI for {redact(tracking_uri)} at {server.url} (Ctrl-C to stop)", flush=True)
        code = server.wait()
        print(f"segleak: mlflow server exited with {code}: {server.log_tail()}", file=sys.stderr)
        return code if code > 0 else 1
    except Stopped as stopped:
        print(f"segleak: {stopped}, stopping the MLflow UI", file=sys.stderr, flush=True)
        return 128 + stopped.signum
    finally:
        for sig in previous:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
