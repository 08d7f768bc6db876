"""Reference attacks through the real unit kinds and store: the fit unit assembles a bank from release units
and refuses one whose models trained on a victim query image (from what they recorded), Ray Tune chooses a
value on the attacker's data and the cell scores with it, and the LiRA protocol pools the bank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_attacks_reference import simulated_bank  # a simulated bank and target with known membership

from benchmark.attacks.base import Observed
from benchmark.errors import SegleakError
from benchmark.models.release import save_released
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.kinds.cell import CellConfig, CellKind
from ray_jobs.units.kinds.fit import FitConfig, FitKind
from ray_jobs.units.kinds.protocol import ProtocolConfig, ProtocolKind
from ray_jobs.units.kinds.release import OUTPUTS

DATASET = {"type": "bdd100k"}  # its ids are their own groups
NONE = {"name": "none", "params": {}}


def _model(store: ResultStore, key: str, train: list[str], seen: list[str] | None = None) -> None:
    with store.writing("model", key, {"train_ids": sorted(train)}) as out:
        (out / "seen_train_ids.json").write_text(json.dumps(sorted(seen if seen is not None else train)))
        (out / "summary.json").write_text("{}")


def _release(store: ResultStore, key: str, model: str, released, members: list[str]) -> None:
    with store.writing("release", key, {"model": model, "members": sorted(members),
                                         "nonmembers": sorted(set(released.ids) - set(members))}) as out:
        save_released(released, out / OUTPUTS)


def stored_bank(store: ResultStore, signal: float = 1.5, leak: str | None = None, k: int = 6):
    """A simulated bank, its target and the target's population outputs, written as model and release units."""
    bank, target, member = simulated_bank(k, 50, 80, signal)
    keys = []
    for j, released in enumerate(bank.references):
        train = [i for i, m in zip(bank.ids, bank.masks[j]) if m]
        _model(store, f"model-ref{j}", train, train + ([leak] if leak and j == 1 else []))
        _release(store, f"release-ref{j}", f"model-ref{j}", released, train)
        keys.append(f"release-ref{j}")
    queries = list(target.released.ids)
    _model(store, "model-victim", [i for i, m in zip(queries, member) if m])
    _release(store, "release-victim", "model-victim", target.released, [i for i, m in zip(queries, member) if m])
    _release(store, "release-population", "model-victim", target.population, [])
    return bank, keys, queries, member


def fit_config(bank, keys, queries, name: str, tune: dict | None = None, **params) -> FitConfig:
    attack = {"name": name, "params": params, **({"tune": tune} if tune else {})}
    return FitConfig(release=None, attack=attack, attack_train={}, output_defense=NONE, calibration_fraction=0.25,
                     seed=0, references=keys, pool=bank.pool, population=bank.population, queries=sorted(queries))


def run_fit(store: ResultStore, config: FitConfig, key: str = "fit-1") -> dict:
    return FitKind().run(key, config, store, 1)


def test_offline_fit_refuses_a_bank_that_trained_on_a_victim_query_image(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    bank, keys, queries, _ = stored_bank(store, leak=None)
    summary = run_fit(store, fit_config(bank, keys, queries, "lira"))
    assert summary["n_calibration"] == 6 * 50 and 0.5 < summary["calibration_auc"] <= 1
    leaky = ResultStore(tmp_path / "leaky")
    bank, keys, queries, _ = stored_bank(leaky, leak="img060")  # reference 1's loader saw a query image
    with pytest.raises(SegleakError, match="reference 1 of the bank .* victim query image 'img060'"):
        run_fit(leaky, fit_config(bank, keys, queries, "lira"))
    online = fit_config(bank, keys, [], "lira", variant="online")  # online banks may train on them
    assert run_fit(leaky, online, "fit-online")["n_calibration"] == 6 * 50


def test_tuned_rmia_is_scored_with_its_tuned_value_and_logs_it(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import ray

    store = ResultStore(tmp_path)
    bank, keys, queries, member = stored_bank(store)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_fit(store, fit_config(bank, keys, queries, "rmia", tune={"a": [0.0, 0.5, 1.0]}))
    finally:
        ray.shutdown()
    assert summary["tuned"]["a"] in (0.0, 0.5, 1.0) and set(summary["tuned_folds"]) == {"all", "even", "odd"}
    cell = CellConfig(fit="fit-1", release="release-victim", victim_model="model-victim", dataset=DATASET,
                      output_defense=NONE, scored_ids=sorted(queries), seed=0, population="release-population")
    result = CellKind().run("cell-1", cell, store, 1)
    assert result["tuned"] == summary["tuned"] and result["auc"] > 0.8
    from benchmark.registry import ATTACKS

    rmia = ATTACKS.lookup("rmia")(a=summary["tuned"]["a"])
    victim = Observed(bank.references[0].select(queries))  # any released outputs on the query images
    with pytest.raises(SegleakError, match="population"):
        rmia.score(summary["state"], store.local_dir("fit", "fit-1"), victim, 0)


def test_protocol_pools_every_pseudo_target(tmp_path: Path) -> None:
    """(Its placebo, placebo models through the same leave-one-out code: tests/test_placebo_protocol.py.)"""
    store = ResultStore(tmp_path)
    bank, keys, queries, _ = stored_bank(store, k=8)
    run_fit(store, fit_config(bank, keys, [], "lira", variant="online"))
    real = ProtocolKind().run("protocol-1", ProtocolConfig(fit="fit-1", dataset=DATASET, placebo=False, seed=0), store, 1)
    assert real["n_targets"] == 8 and real["n_members"] + real["n_nonmembers"] == 8 * 50
    assert real["auc_ci_low"] > 0.6 and np.isfinite(real["auc"])
    assert real["balanced_accuracy"] is None and "pseudo-targets" in real["missing"]["balanced_accuracy"]
    scores = (store.local_dir("protocol", "protocol-1") / "scores.csv").read_text().splitlines()
    assert scores[0] == "image_id,group,target,is_member,score" and len(scores) == 8 * 50 + 1


def test_stored_offline_lira_scores_keep_full_precision(tmp_path: Path) -> None:
    """Offline LiRA's scores are log-CDFs a hair below 0 for members: a file rounded to a few decimals ties
    them all at 0, and whatever re-reads it (the LiRA protocol's metrics, ROC figures) ranks ties, not scores
    (a ROC figure from rounded files read AUC 0.57 where the leaderboard had 0.94)."""
    from sklearn.metrics import roc_auc_score

    from benchmark.attacks.reference import CALIBRATION_FILE

    store = ResultStore(tmp_path)
    bank, keys, _, _ = stored_bank(store, k=8)
    summary = run_fit(store, fit_config(bank, keys, [], "lira", variant="offline"))
    frame = pd.read_csv(store.local_dir("fit", "fit-1") / CALIBRATION_FILE)
    assert ((frame["score"] < 0) & (frame["score"] > -1e-8)).any()  # rounded to 8 decimals these were -0.0
    assert roc_auc_score(frame["is_member"], frame["score"]) == pytest.approx(summary["calibration_auc"], abs=1e-9)
