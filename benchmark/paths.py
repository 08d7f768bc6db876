"""Default locations shared by the CLI, the grid runner and the analysis commands."""

from __future__ import annotations

from pathlib import Path

from benchmark.errors import SegleakError

DEFAULT_RESULTS = "results"


def default_tracking_uri(results: str | Path = DEFAULT_RESULTS) -> str:
    """The SQLite MLflow store inside the results folder, as an absolute URI (Ray trials chdir)."""
    if "://" in str(results) and not str(results).startswith("file://"):
        raise SegleakError(f"results location {results}: a bucket holds no SQLite store; pass --tracking-uri "
                           "(e.g. the tracking server's http:// address)")
    return f"sqlite:///{Path(str(results).removeprefix('file://')).expanduser().resolve() / 'mlflow.db'}"


def project_root() -> Path:
    """The source checkout (the project is installed editable, so configs and profiles live here)."""
    return Path(__file__).resolve().parents[1]
