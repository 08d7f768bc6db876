"""Turns scheduler events into MLflow runs (through each unit kind's `log`), and the finished invocation
into a report and a summary."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.errors import SegleakError
from benchmark.failure import one_line, raise_if_disk_full
from benchmark.redact import redact
from benchmark.safe_paths import inside
from ray_jobs.recording.owner import temp_name
from ray_jobs.recording.store import ResultStore
from ray_jobs.recording.tracking import Tracker
from ray_jobs.running.background_log import BackgroundLogger
from ray_jobs.running.scheduler import SKIPPED
from ray_jobs.units import UNIT_KINDS
from ray_jobs.units.base import Plan, Unit

if TYPE_CHECKING:
    from ray_jobs.grid.spec import Grid


@dataclass
class Summary:
    """What one invocation did: the plan's counts, failures, reuse and time, and where its report is."""

    plan_counts: dict[str, int]
    failed: dict[str, str] = field(default_factory=dict)
    cached: int = 0
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


class Reporter:
    """Logs each finished or failed unit through its kind; `background`: in a child process (see
    ray_jobs.running.background_log), so the driver only hands the event over."""

    def __init__(self, plan: Plan, store: ResultStore, tracker: Tracker, background: bool = False) -> None:
        self.plan, self.store, self.tracker = plan, store, tracker
        self.kinds = {name: UNIT_KINDS.lookup(name)() for name in {u.kind for u in plan.units.values()}}
        self.logger = BackgroundLogger(tracker, store.root, store.invocation) if background else None

    def unit_done(self, unit: Unit, summary: dict[str, Any]) -> None:
        """Log a finished unit (in the background logger when there is one), unless an earlier or a concurrent
        invocation logged it already: then its run is tagged as one of this invocation's instead."""
        if self.logger is not None:
            self.logger.log_done(unit, summary)
        else:
            self.tracker.log_unit(self.kinds[unit.kind], unit, summary, self.store)

    def unit_failed(self, unit: Unit, error: str) -> None:
        if self.logger is not None:
            self.logger.log_failed(unit, error)
        else:
            self.kinds[unit.kind].log_failure(self.tracker, unit, error)

    def flush(self) -> list[tuple[str, BaseException]]:
        """Wait until the units handed over so far are logged: the (unit key, error) pairs met meanwhile
        (logged in this process, an error has been raised already)."""
        return self.logger.flush() if self.logger is not None else []

    def close(self, stream=sys.stdout) -> None:
        """Log what is left and stop the background logger; a unit it could not log is named in one line."""
        if self.logger is None:
            return
        try:
            errors = self.logger.close()
        except SegleakError as exc:  # the results are in the store: say so, and still write what can be
            print(f"warning: {exc}", file=stream)
            return
        for key, error in errors:
            print(f"warning: could not log unit {key} to MLflow: {type(error).__name__}: {error}", file=stream)

    def _leakage_maps(self, out: Path) -> list[Path]:
        """One figure per undefended, non-placebo victim release: where members and non-members differ."""
        from analysis.leakage import plot_leakage_map
        from benchmark.attacks.features import loss_map
        from benchmark.data.adapters import get_adapter
        from ray_jobs.units.kinds.release import load_observed

        written = []
        releases = {u.config.release: u for u in self.plan.of_kind("cell")
                    if u.meta.defense == "none" and u.meta.control == "none"}
        for release_key, cell in sorted(releases.items()):
            if not self.store.is_done("release", release_key):
                continue
            observed = load_observed(self.store, release_key, None, seed=0)
            released, is_member = observed.released, observed.is_member
            adapter = get_adapter(cell.config.dataset)
            loss = loss_map(released.log_probs.float(), released.labels.long(), adapter.ignore_index)[:, 0].numpy()
            labels = released.labels.numpy()
            path = inside(out, f"leakage_{cell.meta.dataset}_{cell.meta.victim_arch}_{release_key[-8:]}.png")
            plot_leakage_map(loss[is_member], labels[is_member], loss[~is_member], labels[~is_member],
                             adapter.classes, path, ignore_index=adapter.ignore_index)
            written.append(path)
        return written

    def kill(self) -> None:
        """Stop the background logger at once (the invocation is failing; the next one logs every unit)."""
        if self.logger is not None:
            self.logger.kill()

    def _write(self, grid: Grid, out: Path) -> dict[str, Any]:
        """Leaderboard, plots and leakage maps into `out` (nothing logged to MLflow yet)."""
        from analysis.report import write_index, write_report

        report: dict[str, Any] = write_report(self.tracker.uri, grid.name, out, self.tracker.parent_id, log=False)
        if grid.leakage_maps:
            report["leakage"] = self._leakage_maps(out / "leakage")
            write_index(self.tracker.uri, out, self.tracker.parent_id)  # again, with the leakage maps
        return report

    def write_report(self, grid: Grid) -> dict[str, Any]:
        """The report, all or nothing: written into a private folder beside `<results>/report`, then renamed into
        its place, so a full disk or a crash leaves the previous report whole (or none), never a mix."""
        final = self.store.local_root / "report"
        staging = final.with_name(temp_name("report"))
        try:
            report = self._write(grid, staging)
            old = final.with_name(temp_name("report-old"))
            try:
                os.rename(final, old)
            except FileNotFoundError:
                old = None
            os.rename(staging, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except Exception as exc:
            raise_if_disk_full(exc, staging, final)  # measured before the staging folder is removed
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {name: [final / Path(p).relative_to(staging) for p in paths] for name, paths in report.items()}

    def finish(self, grid: Grid, summary: Summary, stream=sys.stdout) -> dict[str, Any]:
        self.close(stream)  # every run logged before the report reads them; the driver writes again after
        report: dict[str, Any] = {}
        out = self.store.local_root / "report"
        try:
            report = self.write_report(grid)
            self.store.publish_dir("report")
            for name in report:
                self.tracker.log_parent({}, out / name, name)
        except Exception as exc:  # noqa: BLE001 - the runs are logged; a report problem must not hide them
            print(f"warning: no report written ({one_line(exc)}); the runs are in MLflow, and "
                  f"`segleak leaderboard` / `segleak plots` write it later", file=stream)
        html = [p for p in report.get("leaderboard", []) if Path(p).suffix == ".html"]
        self.tracker.describe(grid.name, html[0] if html else None)
        self.tracker.log_headline()
        self.tracker.log_parent({
            "wall_seconds": summary.wall_seconds, "compute_seconds": summary.compute_seconds,
            "n_units": len(self.plan.units), "n_cached": summary.cached, "n_failed": len(summary.failed),
        })
        _print_summary(summary, report, self.tracker, stream)
        return report


def _print_summary(summary: Summary, report: dict[str, Any], tracker: Tracker, stream) -> None:
    counts = summary.plan_counts
    kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items() if kind != "naive_models")
    print("\n== segleak summary ==", file=stream)
    print(f"units: {kinds} ({summary.cached} reused from earlier runs); naive grid would train "
          f"{counts['naive_models']} models", file=stream)
    print(f"time: {summary.wall_seconds:.0f} s wall, {summary.compute_seconds:.0f} s of unit compute", file=stream)
    if summary.failed:
        causes = {k: e for k, e in summary.failed.items() if not e.startswith(SKIPPED)}
        print(f"FAILED: {len(summary.failed)} units ({len(causes)} failed, "
              f"{len(summary.failed) - len(causes)} skipped because of them)", file=stream)
        for key, error in sorted(causes.items()):
            print(f"  {key}: {redact(error)}", file=stream)
    from analysis.leaderboard import KEY_RESULTS

    key_results = [Path(p) for p in report.get("leaderboard", []) if Path(p).name == KEY_RESULTS]
    if key_results:  # the headline and the null-check tally, as the leaderboard's key-results box says them
        print("\n" + key_results[0].read_text(encoding="utf-8").rstrip(), file=stream)
    for name in ("index", "leaderboard", "plots"):
        paths = [Path(p) for p in report.get(name, [])]
        if paths:
            print(f"{name}: {paths[0] if name == 'index' else paths[0].parent}", file=stream)
    uri = redact(tracker.uri)
    print(f"MLflow: {uri} (experiment {tracker.client.get_experiment(tracker.experiment_id).name}, "
          f"run {tracker.parent_id}); browse with `segleak ui --tracking-uri {uri}` or `make ui`", file=stream)
