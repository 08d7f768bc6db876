"""After a grid run: leaderboard and plots on disk and attached to the invocation's parent run, so they
can be browsed in the MLflow UI next to the runs they summarise."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from analysis.leaderboard import write_leaderboard
from analysis.plots import write_plots


def write_report(tracking_uri: str, experiment: str | None, out_dir: Path, parent_run_id: str,
                 log: bool = True) -> dict[str, list[Path]]:
    """Write <out_dir>/leaderboard and <out_dir>/plots for `parent_run_id`; log them under the same names
    (`log=False`: the caller logs them once the report is complete, as the runner does)."""
    written = {
        "leaderboard": write_leaderboard(tracking_uri, experiment, out_dir / "leaderboard", parent_run_id),
        "plots": write_plots(tracking_uri, experiment, out_dir / "plots", parent_run_id),
    }
    if not log:
        return written
    client = MlflowClient(tracking_uri)
    for name, paths in written.items():
        for path in paths:
            client.log_artifact(parent_run_id, str(path), artifact_path=name)
    return written
