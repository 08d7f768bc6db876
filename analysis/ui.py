"""`segleak ui`: the MLflow UI for the results store, on the loopback interface only."""

from __future__ import annotations

from analysis.server import TrackingServer


def serve_ui(tracking_uri: str, port: int = 5000) -> int:
    """Serve until Ctrl-C (exit code 0) or until the server dies (its exit code); always stops its children."""
    server = TrackingServer(tracking_uri, port=port)
    with server:
        print(f"MLflow UI for {tracking_uri} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0
