"""Default locations shared by the CLI, the grid runner and the analysis commands."""

from __future__ import annotations

from pathlib import Path

DEFAULT_RESULTS = "results"


def default_tracking_uri(results: str | Path = DEFAULT_RESULTS) -> str:
    """The SQLite MLflow store inside the results folder, as an absolute URI (Ray trials chdir)."""
    return f"sqlite:///{Path(results).expanduser().resolve() / 'mlflow.db'}"


def project_root() -> Path:
    """The source checkout (the project is installed editable, so configs and profiles live here)."""
    return Path(__file__).resolve().parents[1]
