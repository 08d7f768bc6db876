"""`segleak ui`: the MLflow UI for the results store, on the loopback interface only.

Stopping it the way people and service managers do (Ctrl-C, `kill`, `systemctl stop`, `docker stop`, a closed
terminal) stops the server's whole process group, so no `mlflow server` or uvicorn worker is left holding the
port. The exit code is 128 + the signal's number, as a shell reports a process the signal ended: 130 for
Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP. A `kill -9` of it ends the server too (analysis.server).

The address it prints opens the newest segleak experiment on its runs table. MLflow 3's UI shows an
experiment in its "GenAI" view (an overview of traces) unless the browser chose "Model training" before
(kept in its local storage) or the address says `workflowType=machine_learning`; the experiment's
`mlflow.experimentKind` tag alone does not change that in a fresh browser.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from unittest import mock

from mlflow.tracking import MlflowClient

from analysis.server import STOP_SIGNALS, TrackingServer
from benchmark.redact import redact
from benchmark.signals import Stopped, raise_stopped


def landing_path(server_url: str) -> str:
    """The UI's path to the runs table of the newest experiment holding a segleak invocation, asked of the
    running server; its home page when there is none yet, or the server does not answer at once."""
    from analysis.runs import newest_experiment

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    try:
        with mock.patch.dict(os.environ, quick):
            experiment = newest_experiment(MlflowClient(server_url), server_url)
    except Exception:  # noqa: BLE001 - no segleak run yet, or no answer: the home page still works
        return "/"
    return f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"


def serve_ui(tracking_uri: str, port: int = 5000) -> int:
    """Serve until a stop signal (128 + its number) or until the server dies (its exit code)."""
    server = TrackingServer(tracking_uri, port=port)
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = {sig: signal.signal(sig, raise_stopped) for sig in STOP_SIGNALS} if main else {}
    try:
        server.start()
        print(f"MLflow UI for {redact(tracking_uri)} at {server.url}{landing_path(server.url)} (Ctrl-C to stop)",
              flush=True)
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
