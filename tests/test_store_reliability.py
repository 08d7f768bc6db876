"""The results store under concurrent invocations and damaged files (issue 18).

Ownership: a unit is computed under its lock, another process needing it waits for its marker, and a lock
or temp dir is taken over or swept only when its owner is provably gone. Checksums: a damaged finished unit
is detected (naming the file and why), moved aside and recomputed. Ledger: every completed computation is
an event, also one that lost the race to publish.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmark.errors import SegleakError
from ray_jobs.recording.store import (DAMAGED, DAMAGED_NOTE, HOST_ID, LOCK_PREFIX, MARKER, TEMP_PREFIX, DamagedUnit,
                                      ResultStore, current_owner)

REPO = Path(__file__).resolve().parents[1]


def _write(store: ResultStore, kind: str, key: str, payload: bytes = b"w" * 1000, name: str = "model.pt") -> None:
    with store.writing(kind, key, {"n": 1}) as out:
        (out / name).write_bytes(payload)
        (out / "summary.json").write_text('{"score": 0.5}')


def _trainings(store: ResultStore, kind: str = "model") -> Counter:
    return Counter(e["key"] for e in store.ledger() if e["kind"] == kind)


# --- ownership: locks and temp dirs ---------------------------------------------------------------------

def test_two_writers_of_one_unit_compute_it_once_the_other_waits_and_reads_it(tmp_path):
    computed, records, errors = [], [], []
    go = threading.Barrier(2)

    def invocation(n: int) -> None:
        try:
            store = ResultStore(tmp_path, invocation=f"inv{n}", poll_s=0.05)
            go.wait()
            with store.claim("model", "m1") as mine:
                if mine:
                    computed.append(n)
                    with store.writing("model", "m1", {"n": 1}) as out:
                        time.sleep(0.5)  # a long training: the other invocation arrives meanwhile
                        (out / "model.pt").write_bytes(b"weights")
            records.append(store.read_unit("model", "m1"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=invocation, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(computed) == 1 and len(records) == 2
    assert records[0] == records[1] and records[0]["invocation"] == f"inv{computed[0]}"
    store = ResultStore(tmp_path)
    assert _trainings(store) == {"m1": 1}
    assert not list(tmp_path.glob(f"model/{LOCK_PREFIX}*")) and not list(tmp_path.glob(f"model/{TEMP_PREFIX}*"))


HOLDER = """
import sys, time
from ray_jobs.recording.store import ResultStore
store = ResultStore(sys.argv[1])
with store.claim("model", "m1") as mine:
    assert mine
    with store.writing("model", "m1", {}) as out:
        print(out, flush=True)
        time.sleep(600)
"""


def test_a_live_owner_is_waited_for_and_kept_a_killed_one_is_taken_over_and_swept(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        temp = Path(holder.stdout.readline().strip())
        assert temp.is_dir() and temp.name.startswith(f"{TEMP_PREFIX}m1@")
        store = ResultStore(tmp_path, poll_s=0.05)
        assert store.lock_owner("model", "m1")["pid"] == holder.pid
        # another invocation starting up: its sweep must leave the live owner's work alone
        assert store.sweep_stale() == 0 and temp.is_dir()
        claimed, claim = [], store.claim("model", "m1")
        waiter = threading.Thread(target=lambda: claimed.append(claim.__enter__()))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive(), "took the unit of a live owner"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    waiter.join(10)
    assert claimed == [True]  # the owner is gone: the waiter computes the unit itself
    assert not temp.exists()  # the dead owner's temp dir went when its lock was taken over
    assert store.lock_owner("model", "m1")["pid"] == os.getpid()
    claim.__exit__(None, None, None)
    assert store.lock_owner("model", "m1") is None


def test_sweep_removes_only_temp_dirs_and_locks_whose_owner_is_gone(tmp_path):
    store = ResultStore(tmp_path, lease_s=60)
    (tmp_path / "model").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, pid, start = current_owner()
    names = {
        "mine": f"{TEMP_PREFIX}a@{host}.{pid}.{start}.0001",                 # this (live) process
        "reused_pid": f"{TEMP_PREFIX}b@{host}.{pid}.1.0002",                 # our pid, another process's start
        "dead": f"{TEMP_PREFIX}c@{host}.{dead.pid}.123.0003",                # a process that exited
        "other_host": f"{TEMP_PREFIX}d@ffffffff.{pid}.{start}.0004",         # cannot tell: lease still fresh
        "other_host_old": f"{TEMP_PREFIX}e@ffffffff.{pid}.{start}.0005",     # its lease expired
        "no_owner": f"{TEMP_PREFIX}f-1234abcd",                              # an older version's name
    }
    for name in names.values():
        (tmp_path / "model" / name).mkdir()
    old = time.time() - 120
    os.utime(tmp_path / "model" / names["other_host_old"], (old, old))
    lock = {"host": "gone", "host_id": HOST_ID, "pid": dead.pid, "start": "1", "token": "t"}
    (tmp_path / "model" / f"{LOCK_PREFIX}m1").write_text(json.dumps(lock))
    (tmp_path / "model" / f"{LOCK_PREFIX}m2").write_text(json.dumps({**lock, "pid": pid, "start": start}))
    assert store.sweep_stale() == 4
    left = {p.name for p in (tmp_path / "model").iterdir()}
    assert left == {names["mine"], names["other_host"], names["no_owner"], f"{LOCK_PREFIX}m2"}


def test_another_hosts_lock_is_waited_for_until_its_lease_expires(tmp_path):
    store = ResultStore(tmp_path, lease_s=30, poll_s=0.05)
    lock = tmp_path / "model" / f"{LOCK_PREFIX}m1"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"host": "node7", "host_id": "ffffffff", "pid": 1, "start": "1", "token": "t"}))
    assert store._try_lock("model", "m1") is None  # fresh lease: node7 may be computing it
    old = time.time() - 60
    os.utime(lock, (old, old))
    with store.claim("model", "m1") as mine:
        assert mine and store.lock_owner("model", "m1")["pid"] == os.getpid()
    assert not lock.exists()


def test_a_lock_held_while_computing_keeps_its_lease_fresh(tmp_path):
    store = ResultStore(tmp_path, lease_s=0.4)
    with store.claim("model", "m1"):
        lock = tmp_path / "model" / f"{LOCK_PREFIX}m1"
        old = time.time() - 100
        os.utime(lock, (old, old))
        time.sleep(0.5)
        assert time.time() - lock.stat().st_mtime < 0.4  # the heartbeat refreshed it


# --- ledger ------------------------------------------------------------------------------------------------

def test_ledger_lists_a_duplicate_computation_that_lost_the_race(tmp_path):
    first, second = ResultStore(tmp_path, invocation="a"), ResultStore(tmp_path, invocation="b")
    _write(first, "model", "m1")
    _write(second, "model", "m1")  # without `claim`: computed again, the rename finds the unit published
    events = first.ledger()
    assert [(e["key"], e["invocation"], e["published"]) for e in events] == [("m1", "a", True), ("m1", "b", False)]
    assert all({"host", "pid", "seconds", "time"} <= set(e) for e in events)
    assert first.read_unit("model", "m1")["invocation"] == "a"


# --- checksums and damaged units ---------------------------------------------------------------------------

def test_the_marker_records_checksums_of_files_and_inputs(tmp_path):
    store = ResultStore(tmp_path)
    _write(store, "model", "m1")
    with store.writing("release", "r1", {"model": "m1"}) as out:
        (out / "outputs.npz").write_bytes((store.local_dir("model", "m1") / "model.pt").read_bytes()[:10])
    record = store.read_unit("release", "r1")
    assert record["files"]["outputs.npz"]["bytes"] == 10 and len(record["files"]["outputs.npz"]["sha256"]) == 64
    import hashlib
    assert record["inputs"] == {"model/m1": hashlib.sha256((tmp_path / "model/m1" / MARKER).read_bytes()).hexdigest()}
    assert store.verify("release", "r1") is None and store.verify("release", "nope") is None


@pytest.mark.parametrize("damage, reason", [
    ("truncate", r"model.pt: 500 bytes, marker says 1000"),
    ("flip", r"model.pt: sha256 mismatch"),
    ("delete", r"model.pt is missing"),
])
def test_a_damaged_file_is_named_moved_aside_and_recomputed(tmp_path, damage, reason):
    store = ResultStore(tmp_path)
    _write(store, "model", "m1")
    weights = tmp_path / "model" / "m1" / "model.pt"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:500])
    elif damage == "flip":
        weights.write_bytes(b"x" + weights.read_bytes()[1:])
    else:
        weights.unlink()
    assert store.is_done("model", "m1") == (damage == "flip")  # the cheap check sees sizes only
    assert store.verify("model", "m1") is not None
    with pytest.raises(DamagedUnit, match=reason) as caught:
        store.local_dir("model", "m1")
    aside = Path(caught.value.moved_to)
    assert aside.parent == tmp_path / DAMAGED / "model" and aside.name.startswith("m1-")
    assert json.loads((aside / DAMAGED_NOTE).read_text())["reason"] == caught.value.reason
    assert (aside / MARKER).is_file()  # kept for the operator
    assert not store.is_done("model", "m1")
    with store.claim("model", "m1") as mine:
        assert mine
        _write(store, "model", "m1")
    assert store.verify("model", "m1") is None and _trainings(store) == {"m1": 2}


def test_a_truncated_marker_is_a_damaged_unit_not_a_json_error(tmp_path):
    store = ResultStore(tmp_path)
    _write(store, "model", "m1")
    marker = tmp_path / "model" / "m1" / MARKER
    marker.write_bytes(marker.read_bytes()[:40])
    assert not store.is_done("model", "m1")
    assert store.verify("model", "m1", deep=False).startswith(f"{MARKER} is not valid JSON")
    with pytest.raises(DamagedUnit, match=f"{MARKER} is not valid JSON"):
        store.read_unit("model", "m1")
    # once moved aside, a reader that saw it finished is told it was damaged, not that it never existed
    with pytest.raises(DamagedUnit, match="moved aside by another process"):
        store.read_unit("model", "m1")
    with pytest.raises(SegleakError, match="m9 is not in the results store"):
        store.read_unit("model", "m9")


def test_an_edited_marker_fails_its_own_checksum(tmp_path):
    store = ResultStore(tmp_path)
    _write(store, "model", "m1")
    marker = tmp_path / "model" / "m1" / MARKER
    marker.write_text(marker.read_text().replace('"score": 0.5', '"score": 0.9'))
    assert store.verify("model", "m1", deep=False) == f"{MARKER}: its content does not match its checksum"


def test_claim_moves_a_damaged_unit_aside_before_recomputing_it(tmp_path):
    store = ResultStore(tmp_path)
    _write(store, "model", "m1")
    (tmp_path / "model" / "m1" / "model.pt").write_bytes(b"short")
    with store.claim("model", "m1") as mine:
        assert mine and not (tmp_path / "model" / "m1").exists()
        _write(store, "model", "m1")
    assert store.is_done("model", "m1") and len(list((tmp_path / DAMAGED / "model").iterdir())) == 1


def test_damaged_unit_survives_pickling_for_ray():
    exc = pickle.loads(pickle.dumps(DamagedUnit("release", "r1", "outputs.npz: 1 bytes, marker says 2", "/x")))
    assert (exc.kind, exc.key, exc.reason, exc.moved_to) == ("release", "r1", "outputs.npz: 1 bytes, marker says 2", "/x")
    assert str(exc) == "release unit r1 is damaged: outputs.npz: 1 bytes, marker says 2; moved aside to /x"


# --- the scheduler on damaged units (Ray replaced by an in-process stand-in, units by tiny fakes) --------

class _Ref:
    def __init__(self, fn, args):
        try:
            self.value, self.error = fn(*args), None
        except Exception as exc:  # noqa: BLE001 - raised by get, as Ray does
            self.value, self.error = None, exc

    def future(self):
        """A finished concurrent future, as Ray's `ObjectRef.future()` gives once the task has ended."""
        import concurrent.futures

        future = concurrent.futures.Future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(self.value)
        return future


class _InlineRay:
    """What the scheduler uses of Ray, running each task at submission in this process."""

    @staticmethod
    def remote(fn):
        class Remote:
            def options(self, **_):
                return self

            def remote(self, *args):
                return _Ref(fn, args)
        return Remote()

    @staticmethod
    def wait(refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    @staticmethod
    def get(ref):
        if ref.error is not None:
            raise ref.error
        return ref.value


@dataclasses.dataclass(frozen=True)
class _Config:
    model: str = ""
    release: str = ""
    n: int = 0


class _FakeKind:
    """A unit kind whose work is tiny but reads and writes real files through the store."""

    name = stage = "fake"
    config_type = _Config

    def config(self, values):
        return _Config(**values)

    def brief(self, summary):
        return ""


class _FakeModel(_FakeKind):
    def run(self, key, config, store, threads):
        with store.writing("model", key, dataclasses.asdict(config)) as out:
            (out / "model.pt").write_bytes(bytes(range(256)) * 8)
            (out / "summary.json").write_text('{"miou_train": 0.5, "miou_heldout": 0.4}')
        return {"miou_train": 0.5, "miou_heldout": 0.4}


class _FakeRelease(_FakeKind):
    def run(self, key, config, store, threads):
        with store.writing("release", key, dataclasses.asdict(config)) as out:
            weights = (store.local_dir("model", config.model) / "model.pt").read_bytes()
            np.savez(out / "outputs.npz", x=np.frombuffer(weights, dtype=np.uint8))
        return {"n_images": 4}


class _FakeCell(_FakeKind):
    def run(self, key, config, store, threads):
        with store.writing("cell", key, dataclasses.asdict(config)) as out:
            with np.load(store.local_dir("release", config.release) / "outputs.npz") as data:
                total = int(data["x"].astype(np.int64).sum())
            summary = {"auc": 0.5, "auc_ci_low": 0.4, "auc_ci_high": 0.6, "total": total}
            (out / "summary.json").write_text(json.dumps(summary))
            (out / "scores.csv").write_text("image_id,is_member,score\na,1,0.5\n")
        return summary


@pytest.fixture
def run_grid(monkeypatch, tmp_path):
    import torch

    from ray_jobs.running import scheduler as scheduler_module
    from ray_jobs.units import UNIT_KINDS
    from ray_jobs.units.base import Plan, Unit

    monkeypatch.setattr(scheduler_module, "ray", _InlineRay)
    UNIT_KINDS.names()  # the real kinds are imported first, then replaced for this test
    for kind, fake in {"model": _FakeModel, "release": _FakeRelease, "cell": _FakeCell}.items():
        monkeypatch.setitem(UNIT_KINDS._module_dict, kind, fake)
    plan = Plan()
    plan.add(Unit("model", "model-m", _Config(), (), "victim"))
    plan.add(Unit("release", "release-r", _Config(model="model-m"), ("model-m",), "victim outputs"))
    for n in (1, 2):
        plan.add(Unit("cell", f"cell-c{n}", _Config(release="release-r", n=n), ("release-r",), f"cell {n}"))
    threads = torch.get_num_threads()

    def run() -> tuple[str, object]:
        stream = io.StringIO()
        store = ResultStore(tmp_path / "results")

        def on_done(unit, summary):  # as the reporter does: a finished cell's scores are read on the driver
            if unit.kind == "cell":
                (store.local_dir("cell", unit.key) / "scores.csv").read_text()

        resources = {"fake": {"cpu": 1, "gpu": 0}}
        outcome = scheduler_module.Scheduler(plan, store, resources, retries=0, max_concurrent=2, on_done=on_done,
                                             on_failed=lambda unit, error: None, stream=stream).run()
        return stream.getvalue(), outcome

    yield run, tmp_path / "results"
    torch.set_num_threads(threads)


def test_the_scheduler_recomputes_each_kind_of_damaged_file(run_grid):
    run, results = run_grid
    store = ResultStore(results)
    out, outcome = run()
    assert not outcome.failed and len(outcome.done) == 4

    # a truncated outputs.npz: found at plan time, recomputed; the cells that read it intact stay valid
    release = results / "release" / "release-r"
    (release / "outputs.npz").write_bytes((release / "outputs.npz").read_bytes()[:100])
    out, outcome = run()
    assert not outcome.failed and outcome.cached == {"model-m", "cell-c1", "cell-c2"}
    assert "damaged release release-r: outputs.npz: 100 bytes, marker says" in out
    (aside,) = (results / DAMAGED / "release").iterdir()
    import hashlib
    read = json.loads((results / "cell" / "cell-c1" / MARKER).read_text())["inputs"]["release/release-r"]
    assert read == hashlib.sha256((aside / MARKER).read_bytes()).hexdigest()  # it read the release intact

    # a release damaged without a change of size, read by a cell being computed: the cell raises
    # DamagedUnit, the scheduler recomputes the release, then the cell, and says so in one line
    data = bytearray((release / "outputs.npz").read_bytes())
    data[200] ^= 0xFF
    (release / "outputs.npz").write_bytes(bytes(data))
    os.rename(results / "cell" / "cell-c1", results / "removed-cell")
    out, outcome = run()
    assert not outcome.failed, outcome.failed
    (line,) = [ln for ln in out.splitlines() if "damaged" in ln]
    assert "! cell    cell 1  input damaged release release-r: outputs.npz: sha256 mismatch" in line
    assert "moved aside to" in line and "recomputing it" in line

    # a truncated unit.json, then a truncated model.pt: each named, set aside and recomputed
    marker = results / "model" / "model-m" / MARKER
    marker.write_bytes(marker.read_bytes()[:50])
    out, outcome = run()
    assert not outcome.failed and f"damaged model model-m: {MARKER} is not valid JSON" in out
    weights = results / "model" / "model-m" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:10])
    out, outcome = run()
    assert not outcome.failed and "damaged model model-m: model.pt: 10 bytes, marker says 2048" in out

    # a finished cell whose scores the driver reads for MLflow, damaged without a change of size
    scores = results / "cell" / "cell-c2" / "scores.csv"
    scores.write_text(scores.read_text().replace("0.5", "0.9"))
    out, outcome = run()
    assert not outcome.failed and "damaged cell cell-c2: scores.csv: sha256 mismatch" in out
    assert "4 units in the plan: 4 already finished, 0 to run" in out and outcome.cached == {"model-m", "release-r", "cell-c1"}

    assert _trainings(store) == {"model-m": 3}
    assert _trainings(store, "release") == {"release-r": 3}
    assert _trainings(store, "cell") == {"cell-c1": 2, "cell-c2": 2}
    assert len(list((results / DAMAGED).glob("*/*"))) == 5
    assert all(store.verify(kind, key) is None for kind, key in
               [("model", "model-m"), ("release", "release-r"), ("cell", "cell-c1"), ("cell", "cell-c2")])


# --- end to end: two invocations of the CLI on one results folder ------------------------------------------

@pytest.mark.slow
def test_two_invocations_at_once_train_each_model_exactly_once(tmp_path):
    from mlflow.tracking import MlflowClient

    results = tmp_path / "shared"
    results.mkdir()  # no MLflow database yet: both invocations create it at once
    command = [sys.executable, "-m", "benchmark.cli", "benchmark", "--profile", "smoke", "--results", str(results)]
    started = time.time()
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}) for _ in range(2)]
    outputs = [run.communicate(timeout=900) for run in runs]
    seconds = time.time() - started
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, out[-3000:] + err[-3000:]
    events = ResultStore(results).ledger()
    computed = Counter((e["kind"], e["key"]) for e in events)
    assert sum(kind == "model" for kind, _ in computed) == 6  # the smoke profile's models, placebo victims included
    assert set(computed.values()) == {1}, [unit for unit, n in computed.items() if n > 1]
    assert len(computed) == 49 and all(e["published"] for e in events)
    assert not list(results.glob(f"*/{TEMP_PREFIX}*")) and not list(results.glob(f"*/{LOCK_PREFIX}*"))
    # MLflow: each unit logged once; both invocations list all 24 cells (their own runs and the other's)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segleak-smoke").experiment_id
    cells = client.search_runs([experiment], "tags.`segleak.kind` = 'attack'", max_results=1000)
    assert len(cells) == 24 and len({r.data.tags["segleak.unit"] for r in cells}) == 24
    parents = client.search_runs([experiment], "tags.`segleak.kind` = 'invocation'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    for parent in parents:
        assert sum(r.data.tags.get(f"segleak.in.{parent.info.run_id}") == "true" for r in cells) == 24
    print(f"two concurrent smoke invocations: {seconds:.0f} s; units per invocation "
          f"{Counter(e['invocation'] for e in events)}")
