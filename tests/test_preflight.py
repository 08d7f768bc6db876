"""`segleak benchmark` refuses early, in one line naming the key, file or address, before Ray starts or MLflow
is written: an unreachable tracking server, resources no node has, images of the plan that do not decode or
hold raw labelIds (issue 18)."""

from __future__ import annotations

import io
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml
from PIL import Image

from benchmark.cli import main
from benchmark.errors import SegleakError
from ray_jobs.grid.plan import build_plan
from ray_jobs.grid.sources import make_manifests, prepare_sources
from ray_jobs.grid.spec import PROFILES_DIR, load_grid
from ray_jobs.recording.store import ResultStore
from ray_jobs.running.preflight import _images, check_images, check_resources, check_tracking, cluster_capacity
from ray_jobs.running.runner import run_benchmark
from ray_jobs.units.base import Plan, Unit


@pytest.fixture(scope="module")
def tree(synthetic_tree, tmp_path_factory) -> Path:
    """A real (not synthetic://) Cityscapes tree the smoke grid can split; copied, so tests may damage it."""
    root = tmp_path_factory.mktemp("data") / "cityscapes"
    shutil.copytree(synthetic_tree("cityscapes", n_train=48, n_val=24, size=(32, 64)), root)
    return root


def grid_file(tmp_path: Path, root: Path, **changes) -> Path:
    grid = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    grid.update(datasets={"cityscapes": {"root": str(root)}}, controls=[], defenses=["none"],
                attacks=["loss_threshold"], **changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def plan_of(path: Path, results: Path) -> tuple[Plan, ResultStore]:
    grid, store = load_grid(None, str(path)), ResultStore(results)
    sources = prepare_sources(grid, store)
    return build_plan(grid, sources, make_manifests(grid, sources, store, io.StringIO())), store


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_nothing_started(results: Path) -> None:
    assert not (results / "mlflow.db").exists() and not (results / "model").exists()
    assert not ray.is_initialized()


def test_an_unreachable_tracking_server_is_refused_in_seconds_before_anything_is_written(tree, tmp_path, capsys):
    results = tmp_path / "results"
    started = time.monotonic()
    code = main(["benchmark", "--grid", str(grid_file(tmp_path, tree)), "--results", str(results),
                 "--tracking-uri", f"http://segleak:s3cret@127.0.0.1:{closed_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 10
    assert err.count("\n") == 1 and "MLflow tracking server http://segleak:***@127.0.0.1" in err and "s3cret" not in err
    assert not results.exists()  # no data, no splits, no database


def test_a_silent_server_or_database_is_refused_after_the_timeout(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        with pytest.raises(SegleakError, match=r"is not usable: no answer \(timed out; waited up to 0.5 s\)"):
            check_tracking(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        assert time.monotonic() - started < 3
    with pytest.raises(SegleakError, match=r"database postgresql://u:\*\*\*@127.0.0.1:\d+/db is not reachable"):
        check_tracking(f"postgresql://u:pw@127.0.0.1:{closed_port()}/db", timeout_s=1)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(SegleakError, match="is not a writable folder"):
        check_tracking(f"sqlite:///{a_file}/sub/mlflow.db")
    check_tracking(f"sqlite:///{tmp_path}/new/folders/mlflow.db")  # creatable: passes, creates nothing
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_request_on_a_machine_without_one_is_refused_before_ray_starts(tree, tmp_path):
    resources = {"train": {"cpu": 1, "gpu": 1}, "cell": {"cpu": 1, "gpu": 0}}
    results = tmp_path / "results"
    with pytest.raises(SegleakError, match=r"grid resources.train.gpu: 1 per unit, but the local Ray instance "
                                           r"offers at most 0 GPUs per node"):
        run_benchmark(grid_file=str(grid_file(tmp_path, tree, resources=resources)), results=str(results),
                      stream=io.StringIO())
    assert_nothing_started(results)


def test_more_cpus_per_unit_than_the_local_instance_has_are_refused(tree, tmp_path):
    results = tmp_path / "results"
    with pytest.raises(SegleakError, match=r"resources.cell.cpu: 3 per unit, but the local Ray instance offers at "
                                           r"most 2 CPUs per node; lower it in the grid or raise --max-concurrent"):
        run_benchmark(grid_file=str(grid_file(tmp_path, tree, resources={"cell": {"cpu": 3}})), results=str(results),
                      max_concurrent=2, stream=io.StringIO())
    assert_nothing_started(results)


def test_only_the_stages_the_plan_runs_are_compared():
    plan = Plan()
    plan.add(Unit("model", "model-1", None, (), "a model"))
    resources = {"train": {"cpu": 1, "gpu": 1}, "release": {"cpu": 1, "gpu": 1}, "attack": {"cpu": 1, "gpu": 0},
                 "cell": {"cpu": 64, "gpu": 0}}
    check_resources(plan, resources, {"CPU": 4, "GPU": 1}, "the Ray cluster")  # no cell in this plan
    with pytest.raises(SegleakError, match="resources.train.gpu: 1 per unit, but the Ray cluster at x offers at most 0"):
        check_resources(plan, resources, {"CPU": 4}, "the Ray cluster at x")


@pytest.mark.slow
def test_cluster_capacity_is_what_one_node_of_the_running_cluster_offers():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        capacity = cluster_capacity()
    finally:
        ray.shutdown()
    assert capacity["CPU"] == 1 and capacity.get("GPU", 0) == torch.cuda.device_count()


def _plan_files(plan: Plan, root: Path) -> tuple[set[Path], set[Path]]:
    """(images, labels) of the plan's pairs under `root`."""
    from benchmark.data.adapters import get_adapter

    samples = {s.id: s for s in get_adapter("cityscapes").list_samples(root)}
    ids = set().union(*_images(plan).values())
    return {samples[i].image for i in ids}, {samples[i].label for i in ids}


def test_damaged_images_of_the_plan_are_refused_with_the_file_named_before_training(tree, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(tree, root)
    path = grid_file(tmp_path, root)
    plan, _ = plan_of(path, tmp_path / "scratch")
    images, labels = _plan_files(plan, root)
    outside = sorted(set(root.glob("leftImg8bit/*/*/*.png")) - images)
    assert outside, "the smoke split leaves some images out of the plan"
    truncated, raw_ids, unused = sorted(images)[0], sorted(labels)[-1], outside[0]
    truncated.write_bytes(truncated.read_bytes()[:60])
    unused.write_bytes(b"")  # not read by any unit: not this run's problem
    label = np.asarray(Image.open(raw_ids)).copy()
    label[0, :4] = 26  # a raw Cityscapes labelId (car) where trainIds (0..18, 255) are expected
    Image.fromarray(label).save(raw_ids)
    results = tmp_path / "results"
    started = time.monotonic()
    with pytest.raises(SegleakError) as refused:
        run_benchmark(grid_file=str(path), results=str(results), stream=io.StringIO())
    message = str(refused.value)
    assert "\n" not in message and time.monotonic() - started < 120, message
    assert message.startswith(f"cityscapes at {root}: unreadable or corrupt files: 1 (e.g. {truncated}); label "
                              "values outside the label space (values 26; class ids are 0..18 and 255")
    assert f": 1 (e.g. {raw_ids}) (the whole tree: `segleak data check --dataset cityscapes" in message
    assert str(unused) not in message
    assert_nothing_started(results)


def test_pairs_found_intact_are_not_decoded_again_until_they_change(tree, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(tree, root)
    plan, store = plan_of(grid_file(tmp_path, root), tmp_path / "results")
    images, _ = _plan_files(plan, root)
    assert check_images(plan, store) == len(images)
    assert check_images(plan, store) == 0
    changed = sorted(images)[3]
    changed.write_bytes(changed.read_bytes()[:80])
    with pytest.raises(SegleakError, match=f"unreadable or corrupt files: 1 \\(e.g. {changed}\\)"):
        check_images(plan, store)
