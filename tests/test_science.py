"""The benchmark measures what it claims, end to end on the embedded synthetic data (issue 4's check):
an overfit tiny victim leaks (the SLM attack's AUC interval lies above 0.5), the argmax defense lowers the
leakage, and the placebo control (a victim that never saw the 'members') gives an interval containing 0.5.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

GRID = {
    "name": "segleak-science",
    "datasets": {"cityscapes": {"root": "synthetic"}},
    "synthetic": {"n_train": 200, "n_val": 100, "size": [64, 128], "seed": 0},
    "settings": [{"dataset": "cityscapes", "shadow_dataset": "cityscapes"}],
    "splits": {"dependent": {"victim_members": 48, "victim_nonmembers": 48, "shadow_members": 40, "shadow_nonmembers": 40}},
    "victim_archs": ["pspnet_tiny"],
    "overlaps": [0.5],
    "defenses": ["none", "argmax"],
    "attacks": [{"name": "patch", "representation": "slm"}, "loss_threshold"],
    "controls": ["placebo"],
    "train": {"epochs": 40, "batch_size": 8, "lr": 0.003, "optimizer": "adamw"},
    "attack_train": {"size": "tiny", "crop": 12, "n_crops_train": 6, "n_crops_test": 6, "epochs": 8,
                     "batch_size": 32, "lr": 0.001},
}


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("science")
    (root / "grid.yaml").write_text(yaml.safe_dump(GRID))
    run = subprocess.run([sys.executable, "-m", "benchmark.cli", "benchmark", "--grid", str(root / "grid.yaml"),
                          "--results", str(root / "results")], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segleak-science")
    found = client.search_runs([experiment.experiment_id], "tags.`segleak.kind` = 'attack'")
    return {(r.data.params["attack"], r.data.params["defense"], r.data.params["control"]): r.data.metrics for r in found}


def test_overfit_victim_leaks(cells):
    slm = cells[("patch", "none", "none")]
    assert slm["auc_ci_low"] > 0.5, slm
    assert cells[("loss_threshold", "none", "none")]["auc_ci_low"] > 0.5


def test_argmax_lowers_leakage(cells):
    for attack in ("patch", "loss_threshold"):
        assert cells[(attack, "argmax", "none")]["auc"] < cells[(attack, "none", "none")]["auc"]


def test_placebo_interval_contains_chance(cells):
    for attack in ("patch", "loss_threshold"):
        placebo = cells[(attack, "none", "placebo")]
        assert placebo["auc_ci_low"] <= 0.5 <= placebo["auc_ci_high"], (attack, placebo)
