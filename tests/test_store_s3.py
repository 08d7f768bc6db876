"""The results store on S3, against a real S3 protocol server (moto) on a loopback port.

Credentials and endpoint reach s3fs/botocore the standard way (AWS_* environment variables), exactly as
for MinIO; every test gets its own bucket and its own local cache.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
import s3fs
from mlflow.tracking import MlflowClient
from moto.server import ThreadedMotoServer
from test_grid_e2e import segleak  # the CLI in a subprocess, as a user runs it

from analysis.schema import member_tag
from benchmark.data.roots import local_data_root, synthetic_root
from benchmark.data.synth import SynthSpec
from benchmark.errors import SegleakError
from ray_jobs.recording.store import DAMAGED, LOCK_PREFIX, MARKER, DamagedUnit, ResultStore


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint, monkeypatch, tmp_path, request) -> str:
    """A fresh bucket on the server, the AWS_* environment pointing at it, and a private local cache."""
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                        "SEGLEAK_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep an earlier environment
    name = request.node.name.replace("_", "-").lower()[:50]
    s3fs.S3FileSystem().mkdir(name)
    return name


def _objects(store: ResultStore, relative: str = "") -> list[str]:
    base = store.root.removeprefix("s3://")
    return sorted(p[len(base) + 1:] for p in store.fs.find(f"{store.root}/{relative}".rstrip("/")))


def _write_unit(store: ResultStore, key: str) -> None:
    with store.writing("model", key, {"arch": "tiny"}) as out:
        (out / "model.pt").write_bytes(b"weights")
        (out / "sub").mkdir()
        (out / "sub" / "seen.json").write_text("[1, 2]")
        (out / "summary.json").write_text('{"miou_train": 0.5}')


def test_publish_uploads_every_file_then_the_marker(bucket, monkeypatch):
    store = ResultStore(f"s3://{bucket}/run")
    uploaded: list[str] = []
    put, put_file = store.fs.put, store.fs.put_file
    monkeypatch.setattr(store.fs, "put", lambda lpaths, rpaths, **kw: (uploaded.extend(rpaths), put(lpaths, rpaths, **kw)))
    monkeypatch.setattr(store.fs, "put_file", lambda lpath, rpath, **kw: (uploaded.append(rpath), put_file(lpath, rpath, **kw)))
    assert not store.is_done("model", "m1")
    _write_unit(store, "m1")
    assert uploaded[-1].endswith(f"model/m1/{MARKER}") and len(uploaded) == 4
    assert store.is_done("model", "m1")
    assert _objects(store, "model") == [f"model/m1/{n}" for n in ("model.pt", "sub/seen.json", "summary.json", MARKER)]
    record = store.read_unit("model", "m1")
    assert record["config"] == {"arch": "tiny"} and record["summary"] == {"miou_train": 0.5}
    assert [e["key"] for e in store.ledger()] == ["m1"]


def test_crash_before_the_marker_is_not_done_and_a_rerun_publishes(bucket, monkeypatch):
    store = ResultStore(f"s3://{bucket}/run")

    def killed(lpath: str, rpath: str, **kwargs) -> None:
        raise ConnectionError("upload interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(store.fs, "put_file", killed)  # the files go up, the marker never does
        with pytest.raises(ConnectionError):
            _write_unit(store, "m1")
    assert "model/m1/model.pt" in _objects(store, "model")
    assert not store.is_done("model", "m1") and store.ledger() == []
    with pytest.raises(SegleakError, match="m1 is not in the results store"):
        store.local_dir("model", "m1")
    assert not list(store.local_root.glob("model/*"))  # no local leftovers either
    _write_unit(store, "m1")
    assert store.is_done("model", "m1") and len(store.ledger()) == 1


def test_local_dir_downloads_a_unit_once(bucket, monkeypatch, tmp_path):
    _write_unit(ResultStore(f"s3://{bucket}/run"), "m1")
    monkeypatch.setenv("SEGLEAK_CACHE", str(tmp_path / "other-node"))  # a node that did not compute it
    store = ResultStore(f"s3://{bucket}/run")
    local = store.local_dir("model", "m1")
    assert local.is_relative_to(tmp_path / "other-node")
    assert (local / "model.pt").read_bytes() == b"weights" and (local / "sub" / "seen.json").read_text() == "[1, 2]"
    monkeypatch.setattr(store.fs, "get", lambda *a, **k: pytest.fail("downloaded twice"))
    assert store.local_dir("model", "m1") == local
    assert not list(local.parent.glob(".tmp-*"))


def test_a_damaged_object_is_named_moved_aside_and_recomputed(bucket, monkeypatch, tmp_path):
    store = ResultStore(f"s3://{bucket}/run")
    _write_unit(store, "m1")
    weights = f"{store.root}/model/m1/model.pt"
    store.fs.pipe_file(weights, b"weig")  # truncated in the bucket
    assert not store.is_done("model", "m1")
    assert store.verify("model", "m1", deep=False) == "model.pt: 4 bytes, marker says 7"
    monkeypatch.setenv("SEGLEAK_CACHE", str(tmp_path / "other-node"))
    reader = ResultStore(f"s3://{bucket}/run")
    with pytest.raises(DamagedUnit, match="model.pt: 4 bytes, marker says 7") as caught:
        reader.local_dir("model", "m1")
    aside = caught.value.moved_to.removeprefix(f"{store.root}/")
    assert aside.startswith(f"{DAMAGED}/model/m1-")
    assert {o.rsplit("/", 1)[1] for o in _objects(store, aside)} == {"model.pt", "seen.json", "summary.json", MARKER,
                                                                    "DAMAGED.json"}
    assert not any(o.startswith("model/m1/") for o in _objects(store, "model"))
    with reader.claim("model", "m1") as mine:
        assert mine and _objects(store, "model") == [f"model/{LOCK_PREFIX}m1"]  # the lock is an object
        _write_unit(reader, "m1")
    assert _objects(store, "model")[-1] == f"model/m1/{MARKER}" and not any(LOCK_PREFIX in o for o in _objects(store))
    assert reader.verify("model", "m1") is None and len(store.ledger()) == 2


def test_a_same_size_corruption_is_caught_when_downloaded(bucket, monkeypatch, tmp_path):
    store = ResultStore(f"s3://{bucket}/run")
    _write_unit(store, "m1")
    store.fs.pipe_file(f"{store.root}/model/m1/model.pt", b"WEIGHTS")
    store.fs.pipe_file(f"{store.root}/model/m1/left-over.bin", b"from an interrupted upload")
    assert store.is_done("model", "m1")  # the cheap check compares sizes only
    monkeypatch.setenv("SEGLEAK_CACHE", str(tmp_path / "other-node"))
    reader = ResultStore(f"s3://{bucket}/run")
    assert reader.verify("model", "m1") == "model.pt: sha256 mismatch (file 14422b042349, marker says 9a129038d9a0)"
    with pytest.raises(DamagedUnit, match="model.pt: sha256 mismatch"):
        reader.local_dir("model", "m1")
    assert not list((tmp_path / "other-node").rglob("left-over.bin"))  # only what the marker lists is fetched


def test_ledger_is_one_object_per_event_read_back_in_time_order(bucket):
    store = ResultStore(f"s3://{bucket}/run")
    for key in ("a", "b", "c"):
        store.append_ledger({"kind": "model", "key": key, "seconds": 1.0})
    assert len(_objects(store, "ledger")) == 3
    events = ResultStore(f"s3://{bucket}/run").ledger()
    assert [e["key"] for e in events] == ["a", "b", "c"]
    assert events == sorted(events, key=lambda e: e["time"])


def test_manifests_and_report_are_uploaded(bucket):
    store = ResultStore(f"s3://{bucket}/run")
    where = store.write_json_atomic("splits/abc.json", {"members": ["x"]})
    assert where == f"s3://{bucket}/run/splits/abc.json"
    assert store.fs.cat_file(where) == b'{\n "members": [\n  "x"\n ]\n}'
    (store.local_root / "report" / "plots").mkdir(parents=True)
    (store.local_root / "report" / "plots" / "a.png").write_bytes(b"png")
    assert store.publish_dir("report") == f"s3://{bucket}/run/report"
    assert _objects(store, "report") == ["report/plots/a.png"]
    assert store.sweep_stale() == 0 and _objects(store, "splits") == ["splits/abc.json"]


def test_prepare_names_a_missing_bucket_or_an_unreachable_endpoint(bucket, monkeypatch):
    ResultStore(f"s3://{bucket}/run").prepare()
    with pytest.raises(SegleakError, match="s3://no-such-bucket/run: the bucket does not exist"):
        ResultStore("s3://no-such-bucket/run").prepare()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(SegleakError, match=f"s3://{bucket}/run: cannot write there"):
        ResultStore(f"s3://{bucket}/run").prepare()


def test_synthetic_roots_regenerate_identical_bytes_on_every_node(tmp_path):
    root = synthetic_root(SynthSpec.of("cityscapes", n_train=2, n_val=1, size=[32, 64], seed=3))
    assert root.startswith("synthetic://cityscapes?spec=") and "n_train" in root
    one, two = local_data_root(root, tmp_path / "node1"), local_data_root(root, tmp_path / "node2")
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(files) == 3 * 3  # image, labelIds and trainIds of 3 samples
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert local_data_root("/data/cityscapes", tmp_path) == Path("/data/cityscapes")


def test_cli_refuses_a_missing_bucket_and_a_bucket_without_tracking_uri(bucket, tmp_path):
    run = segleak("benchmark", "--profile", "smoke", "--results", "s3://no-such-bucket/run1",
                  "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "segleak: error: results location s3://no-such-bucket/run1: the bucket does not exist; create it first"]
    run = segleak("benchmark", "--profile", "smoke", "--results", f"s3://{bucket}/run1")
    assert run.returncode != 0 and "pass --tracking-uri" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def _attack_runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("segleak-smoke")
    latest = client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'invocation'",
                                order_by=["attributes.start_time DESC"])[0].info.run_id
    member = member_tag(latest)  # an invocation's runs: those it logged and those it reused
    return [r for r in client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'attack'", max_results=5000)
            if r.data.tags.get(member) == "true"]


@pytest.mark.slow
def test_smoke_benchmark_on_s3_end_to_end(bucket, tmp_path, monkeypatch):
    results, tracking_uri = f"s3://{bucket}/run1", f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = segleak("benchmark", "--profile", "smoke", "--results", results, "--tracking-uri", tracking_uri)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    store = ResultStore(results)
    objects = _objects(store)
    models = [o for o in objects if o.startswith("model/") and o.endswith(f"/{MARKER}")]
    assert models and all(f"{o.rsplit('/', 1)[0]}/model.pt" in objects for o in models)
    for kind in ("release", "fit", "cell", "blind"):
        assert any(o.startswith(f"{kind}/") and o.endswith(f"/{MARKER}") for o in objects)
    assert any(o.startswith("splits/") for o in objects)
    assert any(o.startswith("report/leaderboard/") for o in objects)
    assert not any(o.startswith("data/") for o in objects)  # synthetic data is regenerated, never uploaded
    before = store.ledger()
    assert sorted(e["key"] for e in before if e["kind"] == "model") == sorted(o.split("/")[1] for o in models)
    assert len(_attack_runs(tracking_uri)) == 24

    monkeypatch.setenv("SEGLEAK_CACHE", str(tmp_path / "fresh-node"))  # everything must come from the bucket
    started = time.time()
    second = segleak("benchmark", "--profile", "smoke", "--results", results, "--tracking-uri", tracking_uri)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "already finished, 0 to run" in second.stdout
    assert ResultStore(results).ledger() == before
    assert len(_attack_runs(tracking_uri)) == 24
    print(f"second invocation {time.time() - started:.0f} s")
