"""`make gpu-check` in QUICK mode (tiny archs on the CPU) runs every phase, so the GPU script cannot rot here.

Timings are never asserted; the JSON's schema, the finite-loss flags and the printed table are."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.measure.gpu.measure import FLOP_NOTE, bf16_peak

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("pspnet_tiny", "upernet_tiny", "deeplabv3plus_tiny", "segformer_tiny")
EVERY_ARCH = ("train", "train_det", "release", "dp")
LARGEST_ONLY = ("train_channels_last", "train_compile_channels_last", "train_compile")


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("QUICK", None)
    return subprocess.run([sys.executable, "-m", "ray_jobs.measure.gpu_check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu-check.json"
    done = _run("--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout, out


def _assert_measured(rec: dict, where: str) -> None:
    assert rec["status"] == "ok", (where, rec)
    assert rec["finite"] is True, where
    assert rec["images_per_s"] > 0 and rec["step_s"] > 0 and rec["steps"] >= 1, where
    assert rec["flops_per_step"] > 0 and rec["tflops"] > 0, where
    assert rec["mfu"] is None and rec["mfu_text"] == "n/a (cpu)", where


def test_quick_run_measures_every_arch_and_phase(quick_run):
    result, _, _ = quick_run
    assert result["schema"] == "segleak.gpu-check/1" and result["quick"] is True
    assert result["device"]["kind"] == "cpu" and result["device"]["bf16_peak_tflops"] is None
    assert result["flop_counting"].startswith(FLOP_NOTE)
    assert result["profile"]["image_size"] == [64, 128] and result["profile"]["batch"] == 2
    assert result["profile"]["paper"]["image_size"] == [512, 1024] and result["profile"]["paper"]["batch"] == 8
    assert list(result["archs"]) == list(ARCHS)
    assert result["largest_arch"] in ARCHS
    assert result["skipped_for_time"] == []
    for arch, entry in result["archs"].items():
        expected = set(EVERY_ARCH) | (set(LARGEST_ONLY) if arch == result["largest_arch"] else set())
        assert set(entry["phases"]) == expected, arch
        for name, rec in entry["phases"].items():
            _assert_measured(rec, f"{arch}/{name}")
        assert entry["phases"]["dp"]["settings"]["dp_mode"] == entry["phases"]["dp"]["settings"]["grad_sample_mode"] == "ghost"
        assert entry["phases"]["train_det"]["settings"]["deterministic"] is True
        stride = result["profile"]["output_stride"]  # the paper profile's
        assert entry["phases"]["release"]["release_size"] == [64 // stride, 128 // stride]
    phases = result["archs"][result["largest_arch"]]["phases"]
    assert phases["train_compile"]["settings"]["compile"] == "eager"
    assert phases["train_channels_last"]["flops_per_step"] == phases["train"]["flops_per_step"]
    assert set(result["attack"]) == {"attack_fp32", "attack_bf16"}
    for name, rec in result["attack"].items():
        _assert_measured(rec, name)
    loader = result["loader"]
    assert loader["status"] == "ok" and loader["best_images_per_s"] > 0
    assert {c["workers"] for c in loader["configs"].values()} == {0, 2}
    assert result["goal"]["arch"] == result["largest_arch"] and result["goal"]["met"] is None
    assert 0 < result["elapsed_s"] < 180  # 75-135 s measured on 2 shared cores (the dp phases, ghost: ~36 s)


def test_quick_run_prints_the_table(quick_run):
    result, stdout, out = quick_run
    assert "arch" in stdout and "img/s" in stdout and "MFU" in stdout
    assert FLOP_NOTE in stdout
    for arch in ARCHS:
        assert re.search(rf"^{arch}\s+train\s+2\s+\d", stdout, re.M), arch
    assert "n/a (cpu)" in stdout and "goal: >= 40%" in stdout and str(out) in stdout
    assert all(row["arch"] in stdout and row["phase"] in stdout for row in result["table"])


@pytest.mark.parametrize("args, named", [
    (["--archs", "pspnet", "nosuchnet"], "nosuchnet"),
    (["--archs", "pspnet_paper,bogus_tiny"], "bogus_tiny"),
    (["--budget-s", "0"], "--budget-s"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, named):
    done = _run("--quick", "--out", str(tmp_path / "x.json"), *args, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("segleak: error:"), done.stderr
    assert not (tmp_path / "x.json").exists()


def test_bf16_peak_table():
    assert bf16_peak("NVIDIA H200")[0] == 989.0
    assert bf16_peak("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert bf16_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert bf16_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert bf16_peak("NVIDIA L40S")[0] == 362.0
    assert bf16_peak("Tesla V100-SXM2-32GB")[0] == 125.0
    peak, note = bf16_peak("NVIDIA GeForce RTX 3090")
    assert peak is None and note.startswith("unknown")
    assert math.isclose(bf16_peak("NVIDIA H200")[0], 989.0)
