"""MLflow logging of one benchmark invocation, following the schema in analysis/schema.py.

Only the driver talks to MLflow: units write their results to the store, and the driver logs each unit as
it finishes (or, for a unit finished by an earlier invocation, from the store). That keeps SQLite to a
single writer per invocation, makes a resumed invocation's runs complete without recomputing anything, and
means workers on a cluster need no route to the server. Each unit kind decides what it logs
(`UnitKind.log`); this module only writes runs.

Shared results folders (issue 18):
- A unit has one run per experiment, whoever logs it (issue 27): an invocation first looks for a FINISHED
  one (`reuse`, by the `segleak.unit` tag) and only tags it as its own (`schema.member_tag`). Looking up and
  creating a unit's run happen under a lock on the unit in the results folder (`<results>/mlflow-runs/
  .lock-<key>`), so two invocations logging one unit at once create one run. A unit's FAILED (or KILLED) run
  is replaced by the run that finishes it later: deleted (restorable with `mlflow runs restore`), after
  tagging it `segleak.replaced_by` and handing its member tags to the new run.
- Creating a new SQLite store (its tables) and the experiment is serialised by a lock on the folder.
- The invocation's run says who runs it (host, pid, start time): a later invocation marks a RUNNING one
  whose process is gone (SIGKILL, power loss) KILLED; a live invocation marks its own run FINISHED, FAILED
  or KILLED on the way out (`finish`).
- A unit's run starts and ends when the unit's computation did (its marker's `started` and `seconds`), not
  when it was logged; runs of units finished before markers recorded `started` keep their logging time.
- Artifacts go under the results folder (`<results>/mlartifacts`), or to the tracking server's store,
  never to `./mlruns` in whatever folder the command ran from. A copied results folder's mlflow.db names the
  original folder's `mlartifacts`: it is refused in one line rather than written into the original.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import schema
from benchmark.errors import SegleakError
from benchmark.failure import one_line
from benchmark.redact import redact
from ray_jobs.recording.store import HOST, ResultStore, current_owner, owner_alive

ARTIFACTS_DIR = "mlartifacts"  # as `segleak ui` serves them (analysis.server.default_artifacts)
SERVER_SCHEMES = ("http", "https", "databricks")  # the server decides where artifacts go
PAGE = 5000
ENDED_TAG = "segleak.ended"
REPLACED_TAG = "segleak.replaced_by"
CURVE_PREFIX = "epoch_"  # a model's per-epoch curves: epoch_train_loss, epoch_miou_heldout, ... at step = epoch
RUN_LOCKS = "mlflow-runs"  # <results>/mlflow-runs/.lock-<unit key>: one process at a time logs a unit


def quiet_mlflow() -> None:
    """MLflow logs every store error with its traceback (60 lines for a deleted or locked mlflow.db) before
    raising it; the tracker reports each error in one line, so MLflow's own loggers keep only CRITICAL."""
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def artifact_location(tracking_uri: str, results_root: str) -> str | None:
    """Where a new experiment keeps its artifacts: the server's store for a tracking server, else the results
    folder (a path or a bucket URL), so that nothing lands in `./mlruns` of the current folder."""
    if urlsplit(tracking_uri).scheme in SERVER_SCHEMES:
        return None
    if "://" in results_root and not results_root.startswith("file://"):
        return f"{results_root.rstrip('/')}/{ARTIFACTS_DIR}"
    return (Path(results_root.removeprefix("file://")).expanduser().resolve() / ARTIFACTS_DIR).as_uri()


@contextlib.contextmanager
def creation_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite store's folder: two processes creating one new database both run
    MLflow's table creation and migrations, and one of them fails ("table ... already exists")."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes, also if the process dies
        yield
    finally:
        os.close(fd)


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def unit_span(store: ResultStore, kind: str, key: str) -> tuple[int, int] | None:
    """(start, end) of a finished unit's computation in ms since the epoch, from its marker; None for a
    marker written before markers recorded their start."""
    record = store.finished(kind, key)
    if record is None or not _finite(record.get("started")) or not _finite(record.get("seconds")):
        return None
    start = record["started"] * 1000
    return int(start), int(start + record["seconds"] * 1000)


def _check_location(name: str, location: str | None, expected: str | None) -> None:
    """Refuse an experiment whose artifacts live in another results folder: a copied (or moved) results folder
    brings its mlflow.db, whose experiment keeps the original folder's `mlartifacts`, so the copy's runs would
    write into the original. Experiments of older versions (other locations) and tracking servers are left be."""
    if not location or not expected or location == expected or not location.endswith(f"/{ARTIFACTS_DIR}"):
        return
    store = expected.removesuffix(f"/{ARTIFACTS_DIR}")
    raise SegleakError(f"MLflow experiment {name!r} keeps its artifacts in {redact(location)}, not in this results folder "
                       f"({redact(store)}): the folder or its mlflow.db was copied or moved. Move its mlflow.db aside "
                       "(the next run logs every finished unit again, into a new store) or pass another --tracking-uri")


class Tracker:
    """One parent run per invocation; nested runs per trained model, per grid cell, per blind baseline."""

    def __init__(self, tracking_uri: str, experiment: str, params: dict[str, Any],
                 artifact_root: str | None = None, invocation: str | None = None,
                 locks: ResultStore | None = None) -> None:
        quiet_mlflow()
        self.uri, self.locks = tracking_uri, locks
        try:
            with creation_lock(tracking_uri):
                self.client = MlflowClient(tracking_uri)
                self.experiment_id = self._experiment(experiment, artifact_root)
            self.closed = self.close_dead_invocations()
            host_id, pid, start = current_owner()
            run = self.client.create_run(
                self.experiment_id, run_name=f"{experiment} {time.strftime('%Y-%m-%d %H:%M:%S')} on {HOST}",
                tags={schema.KIND_TAG: schema.INVOCATION, schema.HOST_ID_TAG: host_id, schema.PID_TAG: str(pid),
                      schema.PID_START_TAG: start, "segleak.host": HOST, "segleak.invocation": invocation or ""})
        except SegleakError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the store in one line
            raise SegleakError(f"cannot open MLflow tracking store {redact(tracking_uri)}: {one_line(exc)}") from None
        self.parent_id = run.info.run_id
        self.member = schema.member_tag(self.parent_id)
        self.client.log_batch(self.parent_id, params=[Param(k, redact(str(v))) for k, v in params.items()])
        self._finished: dict[str, str] | None = None  # unit key -> its FINISHED run, loaded on first use
        self._ended = False
        self._span: tuple[int, int] | None = None  # (start, end) in ms of the unit being logged

    def _experiment(self, name: str, artifact_root: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = artifact_location(self.uri, artifact_root) if artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location,
                                                     tags={schema.EXPERIMENT_KIND_TAG: schema.EXPERIMENT_KIND})
            except Exception:  # noqa: BLE001 - created meanwhile by another invocation (on a server: no lock)
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise SegleakError(f"MLflow experiment {name!r} in {redact(self.uri)} was deleted: restore it "
                               f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or rename the grid")
        _check_location(name, found.artifact_location, artifact_location(self.uri, artifact_root) if artifact_root else None)
        if schema.EXPERIMENT_KIND_TAG not in found.tags:
            self.client.set_experiment_tag(found.experiment_id, schema.EXPERIMENT_KIND_TAG, schema.EXPERIMENT_KIND)
        return found.experiment_id

    # -----------------------------------------------------------------------------------------------------
    # runs of invocations that are gone

    def close_dead_invocations(self) -> list[str]:
        """Mark KILLED the RUNNING invocation runs (and their RUNNING nested runs) whose process is provably
        gone: it ran on this host and is dead. Another host's are left alone (nothing here can tell)."""
        closed = []
        running = f"tags.`{schema.KIND_TAG}` = '{schema.INVOCATION}' and attributes.status = 'RUNNING'"
        for run in list(_search_all(self.client, self.experiment_id, running)):
            tags = run.data.tags
            if owner_alive(tags.get(schema.HOST_ID_TAG), tags.get(schema.PID_TAG), tags.get(schema.PID_START_TAG)) is not False:
                continue
            reason = f"its process (pid {tags.get(schema.PID_TAG)} on {tags.get('segleak.host')}) was gone"
            children = f"tags.`{schema.PARENT_TAG}` = '{run.info.run_id}' and attributes.status = 'RUNNING'"
            for child in list(_search_all(self.client, self.experiment_id, children)):
                self.client.set_terminated(child.info.run_id, status="KILLED")
            self.client.set_tag(run.info.run_id, ENDED_TAG, f"marked KILLED by a later invocation: {reason}")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
        return closed

    # -----------------------------------------------------------------------------------------------------
    # one run per unit

    def _finished_units(self) -> dict[str, str]:
        """Unit key -> its oldest FINISHED run in the experiment."""
        found: dict[str, tuple[int, str]] = {}
        for run in _search_all(self.client, self.experiment_id, "attributes.status = 'FINISHED'"):
            key = run.data.tags.get(schema.UNIT_TAG)
            if key and (key not in found or (run.info.start_time, run.info.run_id) < found[key]):
                found[key] = (run.info.start_time, run.info.run_id)
        return {key: run_id for key, (_, run_id) in found.items()}

    def log_unit(self, kind: Any, unit: Any, summary: dict[str, Any], store: Any) -> None:
        """Log a finished unit through its kind, unless an earlier or a concurrent invocation logged it
        already: then that run is tagged as one of this invocation's (one run per unit across invocations)."""
        if self.reuse(unit.key) is not None:
            return
        self._span = unit_span(store, unit.kind, unit.key)
        try:
            kind.log(self, unit, summary, store)
        finally:
            self._span = None

    def reuse(self, unit_key: str) -> str | None:
        """The FINISHED run another invocation (or an earlier one) logged for this unit, now tagged as one of
        this invocation's runs; None when there is none and the unit must be logged."""
        if self._finished is None:
            self._finished = self._finished_units()
        run_id = self._finished.get(unit_key)
        if run_id is not None:
            self.client.set_tag(run_id, self.member, "true")
        return run_id

    def _unit_lock(self, unit_key: str) -> contextlib.AbstractContextManager[None]:
        """The unit's logging lock in the results folder; none without a results folder (one process logs)."""
        return self.locks.holding(RUN_LOCKS, unit_key) if self.locks is not None else contextlib.nullcontext()

    def _create(self, kind: str, name: str, params: dict[str, Any], tags: dict[str, str], metrics: dict[str, Any],
                artifacts: Iterable[Path], status: str, curves: Sequence[dict[str, float]] = ()) -> str:
        start, end = self._span or (None, None)
        run = self.client.create_run(self.experiment_id, start_time=start, run_name=name, tags=tags)
        run_id = run.info.run_id
        values = [Metric(k, float(v), end or 0, 0) for k, v in metrics.items() if _finite(v)]
        values += [Metric(f"{CURVE_PREFIX}{k}", float(v), end or 0, epoch)
                   for epoch, point in enumerate(curves, start=1) for k, v in point.items() if _finite(v)]
        self.client.log_batch(run_id, metrics=values, params=[Param(k, str(v)) for k, v in params.items()])
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=status, end_time=end)
        return run_id

    @classmethod
    def attach(cls, tracking_uri: str, experiment_id: str, parent_id: str, locks: ResultStore | None = None) -> Tracker:
        """The tracker of a running invocation in another process (the background logger): same parent run."""
        quiet_mlflow()
        tracker = cls.__new__(cls)
        tracker.client, tracker.uri, tracker.locks = MlflowClient(tracking_uri), tracking_uri, locks
        tracker.experiment_id, tracker.parent_id = experiment_id, parent_id
        tracker.member = schema.member_tag(parent_id)
        tracker._finished, tracker._ended, tracker._span = None, False, None
        return tracker

    def log_run(self, kind: str, name: str, params: dict[str, Any], tags: dict[str, str] | None = None,
                metrics: dict[str, Any] | None = None, artifacts: Iterable[Path] = (), status: str = "FINISHED",
                curves: Sequence[dict[str, float]] = ()) -> str:
        """A nested run under the invocation: params as text, finite metrics only, then its artifacts; `curves`
        (one dict per epoch) as `epoch_<name>` metrics at step = epoch (1, 2, ...). A unit's
        run (`segleak.unit` tag) is looked up and created under the unit's lock: a FINISHED run logged by any
        invocation is reused (tagged as this one's), and the new run replaces the unit's unfinished ones."""
        tags = {schema.PARENT_TAG: self.parent_id, schema.KIND_TAG: kind, self.member: "true", **(tags or {})}
        unit_key = tags.get(schema.UNIT_TAG)
        if not unit_key:
            return self._create(kind, name, params, tags, metrics or {}, artifacts, status, curves)
        with self._unit_lock(unit_key):
            runs = list(_search_all(self.client, self.experiment_id, f"tags.`{schema.UNIT_TAG}` = '{unit_key}'"))
            finished = sorted((r for r in runs if r.info.status == "FINISHED"), key=lambda r: (r.info.start_time, r.info.run_id))
            if finished:  # logged by an earlier or a concurrent invocation (or a failure after a success)
                run_id = finished[0].info.run_id
                self.client.set_tag(run_id, self.member, "true")
            else:
                run_id = self._create(kind, name, params, tags, metrics or {}, artifacts, status, curves)
                for old in runs:  # the unit's FAILED or KILLED runs: this one takes their place
                    for tag in (t for t in old.data.tags if t.startswith(schema.MEMBER_PREFIX)):
                        self.client.set_tag(run_id, tag, "true")
                    self.client.set_tag(old.info.run_id, REPLACED_TAG, run_id)
                    self.client.delete_run(old.info.run_id)
        if self._finished is not None and (finished or status == "FINISHED"):
            self._finished[unit_key] = run_id
        return run_id

    # -----------------------------------------------------------------------------------------------------
    # the invocation's own run

    def log_parent(self, metrics: dict[str, float], artifacts_dir: Path | None = None, artifact_path: str | None = None) -> None:
        values = [Metric(k, float(v), 0, 0) for k, v in metrics.items() if _finite(v)]
        if values:
            self.client.log_batch(self.parent_id, metrics=values)
        if artifacts_dir is not None and artifacts_dir.exists():
            self.client.log_artifacts(self.parent_id, str(artifacts_dir), artifact_path)

    def log_headline(self) -> None:
        """The invocation's headline leakage and null-check counts as metrics of its run (analysis.run_metrics),
        from the runs it logged and reused."""
        from analysis.run_metrics import invocation_metrics
        from analysis.runs import load_runs

        name = self.client.get_experiment(self.experiment_id).name
        self.log_parent(invocation_metrics(load_runs(self.uri, name, self.parent_id)))

    def describe(self, grid_name: str, leaderboard: Path | None) -> None:
        """The run's description in the MLflow UI: where the leaderboard is, and how to list every run of this
        invocation (runs reused from other invocations are nested under the invocation that logged them)."""
        members = _search_all(self.client, self.experiment_id, f"tags.`{self.member}` = 'true'")
        n_reused = sum(r.data.tags.get(schema.PARENT_TAG) != self.parent_id for r in members)
        lines = [f"segleak benchmark of grid **{grid_name}**."]
        if leaderboard is not None:
            self.client.set_tag(self.parent_id, schema.LEADERBOARD_TAG, str(leaderboard))
            lines.append(f"Leaderboard: the artifact `leaderboard/{leaderboard.name}` of this run (Artifacts tab), "
                         f"and on disk at `{leaderboard}`.")
        lines.append(f"Every run of this invocation, including {n_reused} reused from earlier or concurrent "
                     f"invocations: search runs with ``tags.`{self.member}` = 'true'``.")
        self.client.set_tag(self.parent_id, schema.NOTE_TAG, "\n\n".join(lines))

    def finish(self, status: str, reason: str = "") -> None:
        """End the invocation's run once: FINISHED, FAILED (a unit failed, or the driver crashed) or KILLED
        (Ctrl-C, SIGTERM); `reason` goes into a tag."""
        if self._ended:
            return
        self._ended = True
        if reason:
            self.client.set_tag(self.parent_id, ENDED_TAG, redact(reason)[:4000])
        self.client.set_terminated(self.parent_id, status=status)
