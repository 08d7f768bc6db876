"""`segleak benchmark --dry-run` estimates a grid's GPU-hours per unit kind from a gpu-check JSON: on the paper
profile (a faked dataset index: the paper's image counts, no files), every figure follows from the JSON."""

from __future__ import annotations

import copy
import io
import json
import re

import pytest

from benchmark.errors import SegleakError
from ray_jobs.grid import estimate as estimate_module
from ray_jobs.grid.estimate import MEASURED, GpuCheck, _Estimator, estimate_plan, format_estimate, load_gpu_check

SIZES = {"cityscapes": (2975, 500), "bdd100k": (7000, 1000), "mapillary": (18000, 2000)}  # train, val
TRAIN, RELEASE, DP, ATTACK = 100.0, 1000.0, 10.0, 500.0  # the fake device's images per second


def _fake_index(monkeypatch) -> None:
    """Every dataset lists the paper's numbers of images (as tests/test_data_splits.py fakes Cityscapes)."""
    from benchmark.data import adapters
    from benchmark.data.datasets.bdd100k import BDD100K
    from benchmark.data.datasets.cityscapes import Cityscapes
    from benchmark.data.datasets.mapillary import Mapillary

    for cls in (Cityscapes, BDD100K, Mapillary):
        def list_samples(self, root, split=None, _name=cls.name):
            ids = [f"{s}/{_name[0]}{i:05d}" for s, n in zip(self.splits, SIZES[_name]) for i in range(n)]
            return [adapters.Sample(i, root, root) for i in ids if split is None or i.startswith(f"{split}/")]

        monkeypatch.setattr(cls, "list_samples", list_samples)


def _gpu_check(rate: float = 1.0) -> dict:
    """The committed H200 JSON with round rates (times `rate`): train and release for every architecture,
    DP-SGD for PSPNet alone (the others are extrapolated from it), the patch attack at crop 90."""
    data = json.loads(MEASURED.read_text())
    for arch in data["archs"].values():
        for name, phase in arch["phases"].items():
            if name in ("train", "release", "dp"):
                phase.update(status="ok", image_size=[512, 1024], images_per_s={"train": TRAIN, "release": RELEASE,
                                                                               "dp": DP}[name] * rate)
    for name in ("upernet_paper", "deeplabv3plus_paper", "segformer_paper"):
        data["archs"][name]["phases"]["dp"] = {"status": "skipped"}
    data["attack"]["attack_fp32"].update(images_per_s=ATTACK * rate, crop=90)
    data["attack"]["attack_bf16"] = {"status": "skipped"}
    return data


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper profile's dry run with the fake device: (printed output, the plan it estimated, the grid)."""
    from ray_jobs.running.runner import run_benchmark

    monkeypatch = pytest.MonkeyPatch()
    _fake_index(monkeypatch)
    tmp = tmp_path_factory.mktemp("paper")
    (tmp / "fake.json").write_text(json.dumps(_gpu_check()))
    seen = {}

    def recording(plan, grid, check):
        seen.update(plan=plan, grid=grid)
        return estimate_plan(plan, grid, check)

    monkeypatch.setattr(estimate_module, "estimate_plan", recording)
    monkeypatch.setattr("ray_jobs.running.runner.check_images", lambda plan, store: None)  # the fake index has no files
    out = io.StringIO()
    try:
        summary = run_benchmark(profile="paper", results=str(tmp / "results"), dry_run=True,
                                gpu_check=str(tmp / "fake.json"), stream=out)
    finally:
        monkeypatch.undo()
    assert summary.plan_counts["cell"] == 12816  # 11520 shadow-attack cells, 1296 reference-attack cells
    return out.getvalue(), seen["plan"], seen["grid"]


def _hours(printed: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^  (\w+)\s+\d+\s+([\d.]+)", printed, re.M)}


def test_the_dry_run_prints_gpu_hours_per_kind_that_add_up(paper):
    printed, plan, _ = paper
    assert "estimated GPU time on NVIDIA H200" in printed and "fake.json" in printed
    hours = _hours(printed)
    assert set(hours) == {"model", "release", "fit", "cell", "blind", "protocol", "total"}
    assert hours["cell"] == hours["blind"] == hours["protocol"] == 0 and "12816 use no GPU" in printed
    assert abs(sum(v for k, v in hours.items() if k != "total") - hours["total"]) < 0.2
    assert "data loading is assumed to keep up" in printed and "rates scale with pixels" in printed
    assert "DP-SGD of upernet_paper not measured: its plain rate / 10 (the DP slowdown measured on pspnet_paper)" \
        in printed


def _unit(plan, kind, **where):
    for unit in plan.of_kind(kind):
        if all(getattr(unit.meta, k, None) == v or unit.config.__dict__.get(k) == v for k, v in where.items()):
            return unit
    raise LookupError(where)


def test_each_kind_follows_from_the_measured_rates(paper):
    _, plan, grid = paper
    estimator = _Estimator(plan, grid, GpuCheck("fake", _gpu_check()))
    victim = _unit(plan, "model", role="victim", arch="pspnet_paper", train_defense="none", setting="dependent",
                   placebo=False)
    n, heldout = len(victim.config.train_ids), len(victim.config.heldout_ids)
    assert n == 1488  # the paper's dependent victim
    assert estimator.unit_seconds(victim) == pytest.approx(n * 100 / TRAIN + (n + heldout) / RELEASE)
    early = _unit(plan, "model", role="victim", arch="pspnet_paper", setting="dependent", placebo=False,
                  train_defense="early_stopping(fraction=0.2)")
    assert estimator.unit_seconds(early) == pytest.approx(n * 20 / TRAIN + (n + heldout) / RELEASE)
    for arch in ("pspnet_paper", "segformer_paper"):  # measured, and extrapolated with pspnet's slowdown
        dp = _unit(plan, "model", role="victim", arch=arch, setting="dependent", placebo=False,
                   train_defense="dp_sgd(max_grad_norm=1, target_epsilon=8)")
        assert estimator.unit_seconds(dp) == pytest.approx(n * 100 / DP + (n + heldout) / RELEASE)
    release = next(u for u in plan.of_kind("release") if u.config.model == victim.key)
    assert estimator.unit_seconds(release) == pytest.approx(2400 / RELEASE)
    fit = next(u for u in plan.of_kind("fit") if u.config.attack["name"] == "patch")
    shadow = plan.units[fit.config.release].config
    q = len(shadow.members) + len(shadow.nonmembers)
    crops = 30 * 6 * q * 0.75 + 6 * q * 0.25 / 3  # epochs x crops per training image; calibration forward only
    assert estimator.unit_seconds(fit) == pytest.approx(crops / ATTACK)
    assert estimator.unit_seconds(next(u for u in plan.of_kind("fit") if u.config.attack["name"] != "patch")) is None
    assert estimator.unit_seconds(plan.of_kind("cell")[0]) is None


def test_a_device_twice_as_fast_halves_every_figure(paper):
    _, plan, grid = paper
    once, twice = (estimate_plan(plan, grid, GpuCheck("fake", _gpu_check(rate))) for rate in (1.0, 2.0))
    for kind in once.kinds:
        assert twice.kinds[kind].gpu_seconds == pytest.approx(once.kinds[kind].gpu_seconds / 2)
    assert once.kinds["model"].gpu_seconds > once.kinds["fit"].gpu_seconds > once.kinds["release"].gpu_seconds > 0
    assert set(once.kinds["model"].parts) == {"train", "dp"} and format_estimate(once).count("min)") == 2


def test_gpu_check_files_bad_quick_default(tmp_path):
    with pytest.raises(SegleakError, match=f"gpu-check file {tmp_path / 'none.json'}: cannot read it as JSON"):
        load_gpu_check(str(tmp_path / "none.json"))
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(SegleakError, match="not a `make gpu-check` result"):
        load_gpu_check(str(tmp_path / "other.json"))
    quick = copy.deepcopy(_gpu_check())
    quick["quick"] = True
    (tmp_path / "quick.json").write_text(json.dumps(quick))
    with pytest.raises(SegleakError, match="QUICK=1 result"):
        load_gpu_check(str(tmp_path / "quick.json"))
    assert load_gpu_check(None, str(tmp_path)).source.endswith("nvidia-h200.json")  # nothing in the results
    (tmp_path / "gpu-check.json").write_text(json.dumps(quick))
    assert load_gpu_check(None, str(tmp_path)).source.endswith("nvidia-h200.json")  # a QUICK one is passed over
    (tmp_path / "gpu-check.json").write_text(json.dumps(_gpu_check()))
    assert load_gpu_check(None, str(tmp_path)).source == str(tmp_path / "gpu-check.json")


def test_the_cli_takes_a_gpu_check_file(tmp_path, capsys):
    from benchmark.cli import main

    assert main(["benchmark", "--profile", "smoke", "--dry-run", "--results", str(tmp_path),
                 "--gpu-check", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err


def test_dp_rates_measured_in_another_mode_are_noted(paper):
    """The committed H200 file measured DP-SGD in the ew mode (no `dp_mode`); the grid trains in ghost."""
    _, plan, grid = paper
    dp = _unit(plan, "model", role="victim", arch="pspnet_paper", setting="dependent", placebo=False,
               train_defense="dp_sgd(max_grad_norm=1, target_epsilon=8)")
    for measured, noted in ((None, True), ("ew", True), ("ghost", False)):
        data = _gpu_check()
        settings = data["archs"]["pspnet_paper"]["phases"]["dp"]["settings"]
        if measured:
            settings["dp_mode"] = measured
        estimator = _Estimator(plan, grid, GpuCheck("fake", data))
        estimator.unit_seconds(dp)
        assert any("measured in the ew mode, the grid trains in ghost" in n for n in estimator.notes) is noted
