"""The LiRA protocol's placebo: placebo models (fresh subsets, in no bank) scored as targets under a reference's
recorded mask through the real leave-one-out code, in the real fit and protocol units on a stored bank. It sits
at chance on correct code, and fails when a pseudo-target leaks into its own bank (the mutation), where the
permuted labels of fixed scores it replaces stay at chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_attacks_reference import simulated_bank
from test_units_reference import DATASET, _model, _release, fit_config, run_fit

from benchmark.attacks.reference import Bank, ReferenceAttack
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics
from ray_jobs.recording.store import ResultStore
from ray_jobs.units.kinds.protocol import ProtocolConfig, ProtocolKind

K, P, POOL, SIGNAL = 8, 4, 60, 0.3


def stored_bank_and_placebos(store: ResultStore) -> tuple[Bank, list[str], list[str]]:
    """K references and P placebo models, all simulated on random halves of one pool (each its own draw), the
    references as the bank, the placebo models released apart."""
    models, _, _ = simulated_bank(K + P, POOL, 20, SIGNAL)
    keys = []
    for j, released in enumerate(models.references):
        train = [i for i, m in zip(models.ids, models.masks[j]) if m]
        _model(store, f"model-{j}", train)
        _release(store, f"release-{j}", f"model-{j}", released, train)
        keys.append(f"release-{j}")
    bank = Bank(models.ids, models.references[:K], models.masks[:K], models.pool, models.population)
    return bank, keys[:K], keys[K:]


def run_protocol(store: ResultStore, tune: dict | None = None, **params) -> dict[bool, dict]:
    bank, refs, placebos = stored_bank_and_placebos(store)
    run_fit(store, fit_config(bank, refs, [], "lira", tune=tune, variant="online", **params))
    out = {}
    for placebo in (False, True):
        config = ProtocolConfig(fit="fit-1", dataset=DATASET, placebo=placebo, seed=0,
                                placebos=placebos if placebo else [])
        out[placebo] = ProtocolKind().run(f"protocol-{placebo}", config, store, 1)
    return out


def _inside(summary: dict) -> bool:
    return summary["auc_ci_low"] <= 0.5 <= summary["auc_ci_high"]


def _keep_target_in_its_bank(self, stats, masks, ids, pool, population, j):
    """The bug: pseudo-target j stays among its own references (its signal enters its IN/OUT fits)."""
    from benchmark.attacks.reference import BankView, positions

    index = positions(ids, pool, "pool")
    return BankView(stats, masks, index, stats[j, index]), masks[j, index]


def test_protocol_placebo_models_sit_at_chance_on_correct_code(tmp_path: Path) -> None:
    out = run_protocol(ResultStore(tmp_path))
    real, null = out[False], out[True]
    assert real["n_targets"] == K and real["auc_ci_low"] > 0.6
    assert real["auc_fold_even"] > 0.6 and real["auc_fold_odd"] > 0.6  # what aggregate cross-fits the choice on
    assert null["n_targets"] == P and null["n_placebo_models"] == P and null["n_members"] + null["n_nonmembers"] == P * POOL
    assert _inside(null) and null["placebo_pass"] is True
    scores = (tmp_path / "protocol").glob("protocol-True*/scores.csv")
    assert len(next(iter(scores)).read_text().splitlines()) == P * POOL + 1


def test_a_pseudo_target_leaking_into_its_own_bank_fails_the_placebo(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    honest = run_protocol(ResultStore(tmp_path / "honest"))
    monkeypatch.setattr(ReferenceAttack, "pseudo_target_view", _keep_target_in_its_bank)
    leaky = run_protocol(ResultStore(tmp_path / "leaky"))
    assert leaky[False]["auc"] > honest[False]["auc"] + 0.02  # the leak inflates the real protocol
    assert not _inside(leaky[True]) and leaky[True]["placebo_pass"] is False and leaky[True]["auc"] > 0.55
    # the old placebo (each target's labels permuted over the leaky scores) stays at chance: it cannot fail
    frame = np.genfromtxt(tmp_path / "leaky" / "fit" / "fit-1" / "calibration.csv", delimiter=",", names=True,
                          dtype=None, encoding=None)
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.permutation(frame["is_member"][frame["target"] == t]) for t in range(K)])
    scores = np.concatenate([frame["score"][frame["target"] == t] for t in range(K)])
    old = membership_metrics(scores, labels.astype(bool), seed=0, groups=np.tile(np.arange(POOL), K))
    assert _inside(old)


def test_tuned_protocol_placebo_uses_the_cross_fitted_values(tmp_path: Path) -> None:
    """A tuned fit: each placebo model is scored with the values tuned on the other fold of real targets, as
    the target whose place it takes is; the placebo still sits at chance."""
    pytest.importorskip("ray")
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        out = run_protocol(ResultStore(tmp_path), tune={"variance": ["global", "per_example"]})
    finally:
        ray.shutdown()
    assert _inside(out[True]) and out[False]["auc_ci_low"] > 0.6


def test_a_placebo_cell_without_placebo_models_or_with_a_bank_member_is_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    bank, refs, placebos = stored_bank_and_placebos(store)
    run_fit(store, fit_config(bank, refs, [], "lira", variant="online"))
    with pytest.raises(SegleakError, match="needs placebo models"):
        ProtocolKind().run("p-empty", ProtocolConfig("fit-1", DATASET, True, 0, []), store, 1)
    with pytest.raises(SegleakError, match="is a reference of the bank"):
        ProtocolKind().run("p-ref", ProtocolConfig("fit-1", DATASET, True, 0, [refs[2]]), store, 1)
