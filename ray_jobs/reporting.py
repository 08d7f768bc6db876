"""Turns scheduler events into MLflow runs, and the finished invocation into a report and a summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ray_jobs.plan import Plan, Unit
from ray_jobs.scheduler import SKIPPED
from ray_jobs.store import ResultStore
from ray_jobs.tracking import Tracker

if TYPE_CHECKING:
    from ray_jobs.runner import Summary
    from ray_jobs.spec import Grid


class Reporter:
    def __init__(self, plan: Plan, store: ResultStore, tracker: Tracker) -> None:
        self.plan, self.store, self.tracker = plan, store, tracker
        # models always finish before the cells that read them (a cell depends on its victim's release)
        self.model_summaries: dict[str, dict[str, Any]] = {}

    def unit_done(self, unit: Unit, summary: dict[str, Any]) -> None:
        if unit.kind == "model":
            self.model_summaries[unit.key] = summary
            self.tracker.log_model(unit.key, unit.meta, summary, f"{self.store.location('model', unit.key)}/model.pt")
        elif unit.kind == "cell":
            cell_dir = self.store.local_dir("cell", unit.key)
            roc = cell_dir / "roc.png"
            if not roc.exists():  # drawn on the driver: matplotlib stays out of the workers
                from analysis.roc import plot_cell_roc

                plot_cell_roc(pd.read_csv(cell_dir / "scores.csv"), roc, title=unit.label,
                              attack=f"{unit.meta['attack']}/{unit.meta['representation']}")
            self.tracker.log_cell(unit.key, unit.meta, summary, [cell_dir / "scores.csv", roc],
                                  self.model_summaries[unit.meta["victim_model"]])

    def unit_failed(self, unit: Unit, error: str) -> None:
        if unit.kind in ("model", "cell"):
            self.tracker.log_failure(unit.kind, unit.key, unit.meta, error)

    def _leakage_maps(self, out: Path) -> list[Path]:
        """One figure per undefended, non-placebo victim release: where members and non-members differ."""
        from analysis.leakage import plot_leakage_map
        from benchmark.attacks.features import structured_loss_map
        from benchmark.data.labels import CITYSCAPES_CLASSES
        from ray_jobs.units import load_query

        written = []
        releases = {u.config["release"]: u for u in self.plan.of_kind("cell")
                    if u.meta["defense"] == "none" and u.meta["control"] == "none"}
        for release_key, cell in sorted(releases.items()):
            if not self.store.is_done("release", release_key):
                continue
            query, is_member = load_query(self.store, release_key, {"name": "none", "params": {}}, seed=0)
            loss = structured_loss_map(query.probs, query.labels.long())[:, 0].numpy()
            labels = query.labels.numpy()
            path = out / f"leakage_{cell.meta['dataset']}_{cell.meta['victim_arch']}_{release_key[-8:]}.png"
            plot_leakage_map(loss[is_member], labels[is_member], loss[~is_member], labels[~is_member],
                             CITYSCAPES_CLASSES, path)
            written.append(path)
        return written

    def finish(self, grid: "Grid", summary: "Summary", stream=sys.stdout) -> dict[str, Any]:
        from analysis.report import write_report

        out = self.store.local_root / "report"
        report: dict[str, Any] = {}
        try:
            report = write_report(self.tracker.uri, grid.name, out, self.tracker.parent_id)
            if grid.leakage_maps:
                report["leakage"] = self._leakage_maps(out / "leakage")
                self.tracker.log_parent({}, out / "leakage", "leakage")
            self.store.publish_dir("report")
        except Exception as exc:  # noqa: BLE001 - the runs are logged; a report problem must not hide them
            print(f"warning: could not write the report: {type(exc).__name__}: {exc}", file=stream)
        self.tracker.log_parent({
            "wall_seconds": summary.wall_seconds, "compute_seconds": summary.compute_seconds,
            "n_units": sum(summary.plan_counts[k] for k in ("model", "release", "attack", "cell")),
            "n_cached": summary.cached, "n_failed": len(summary.failed),
        })
        _print_summary(summary, report, self.tracker, stream)
        return report


def _print_summary(summary: "Summary", report: dict[str, Any], tracker: Tracker, stream) -> None:
    counts = summary.plan_counts
    print("\n== segleak summary ==", file=stream)
    print(f"units: {counts['model']} models, {counts['release']} releases, {counts['attack']} attack models, "
          f"{counts['cell']} cells ({summary.cached} reused from earlier runs); naive grid would train "
          f"{counts['naive_models']} models", file=stream)
    print(f"time: {summary.wall_seconds:.0f} s wall, {summary.compute_seconds:.0f} s of unit compute", file=stream)
    if summary.failed:
        causes = {k: e for k, e in summary.failed.items() if not e.startswith(SKIPPED)}
        print(f"FAILED: {len(summary.failed)} units ({len(causes)} failed, "
              f"{len(summary.failed) - len(causes)} skipped because of them)", file=stream)
        for key, error in sorted(causes.items()):
            print(f"  {key}: {error}", file=stream)
    for name in ("leaderboard", "plots"):
        paths = [Path(p) for p in report.get(name, [])]
        if paths:
            print(f"{name}: {paths[0].parent}", file=stream)
    print(f"MLflow: {tracker.uri} (experiment {tracker.client.get_experiment(tracker.experiment_id).name}, "
          f"run {tracker.parent_id}); browse with `segleak ui --tracking-uri {tracker.uri}` or `make ui`", file=stream)
