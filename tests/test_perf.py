"""`make bench` compares equal work and writes every figure; timings themselves are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmark.attacks.features import concatenation, structured_loss_map
from ray_jobs.measure.perf import cli, features, planning
from ray_jobs.measure.perf.common import IGNORE


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_loops_equal_segleak_features(seed):
    probs, labels = features.random_posteriors(2, (9, 13), seed=seed)
    assert (labels == IGNORE).any()
    p, y = probs.numpy(), labels.numpy()
    assert torch.allclose(torch.from_numpy(features.loop_structured_loss_map(p, y)),
                          structured_loss_map(probs, labels), rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.from_numpy(features.loop_concatenation(p, y)), concatenation(probs, labels))
    released = probs.log().half()
    assert features.check_features_equal(probs, labels, released)
    # mutation: a grid path that reads the wrong channel must fail the check
    assert not features.check_features_equal(probs, labels, released.roll(1, dims=1))


def test_default_plan_shares_models():
    counts = planning.bench_planning("default")
    assert counts["error"] is None
    assert 0 < counts["models"] < counts["naive_models"] == 2 * counts["cells"]
    assert counts["attack_models"] <= counts["naive_attack_models"]


def test_help():
    done = subprocess.run([sys.executable, "-m", "ray_jobs.measure.perf", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--quick" in done.stdout and "--out" in done.stdout and "--only" in done.stdout


def test_unknown_section_is_one_clear_line():
    done = subprocess.run([sys.executable, "-m", "ray_jobs.measure.perf", "--only", "features,nope"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown section 'nope'" in done.stderr and "driver" in done.stderr


def test_quick_run_writes_every_key(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["--quick", "--out", str(out), "--only", "features,training,dp,planning,smoke"]) == 0
    result = json.loads(out.read_text())
    assert {"quick", "machine", "sizes", "features", "training", "dp", "planning", "smoke", "release", "table",
            "bench_seconds"} <= set(result)
    assert result["quick"] is True and result["smoke"] is None and "driver" not in result
    assert {"cpu_model", "cores", "torch_threads_default", "versions", "date"} <= set(result["machine"])
    assert result["features"]["outputs_equal"] is True
    assert {"threads_1"} <= set(result["features"])
    assert {"speedup_slm", "speedup_concat", "copy_over_slm", "copy_over_concat"} <= set(result["features"]["threads_1"])
    assert {"lightning_step_s", "plain_step_s", "overhead", "lightning_setup_s"} <= set(result["training"])
    assert {"step_s", "time_ratio", "peak_rss_ratio", "memory"} <= set(result["dp"])
    assert {"ghost", "ew", "plain"} == set(result["dp"]["memory"]) == set(result["dp"]["step_s"])
    assert {"default", "paper"} == set(result["planning"])
    assert {"stored_bytes_per_image", "raw_float32_bytes_per_image", "compression"} <= set(result["release"])
    assert all(set(row) == {"figure", "value", "target", "verdict"} for row in result["table"])
    printed = capsys.readouterr().out
    assert "figure" in printed and "verdict" in printed and str(out) in printed
