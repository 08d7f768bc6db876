"""Threshold attacks on synthetic per-image statistics."""

import json

import numpy as np
import pytest

from benchmark.attacks.threshold import LossThresholdAttack, PixelAccuracyThresholdAttack
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics


def _losses(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0.0, 1.0, n), rng.uniform(2.0, 3.0, n)  # members: lower loss, separable


def test_loss_threshold_member_mean_rule() -> None:
    rng = np.random.default_rng(0)
    shadow_in, shadow_out = _losses(rng)
    attack = LossThresholdAttack().fit(shadow_in, shadow_out)
    assert attack.threshold == pytest.approx(-shadow_in.mean())
    victim_in, victim_out = _losses(rng)
    scores = attack.score(np.r_[victim_in, victim_out])
    member = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    out = membership_metrics(scores, member, threshold=attack.threshold, n_bootstrap=0)
    assert out["auc"] == 1.0
    # member-mean rule: about half the members sit above the mean loss -> recall ~0.5, no false positives
    assert 0.35 < out["recall"] < 0.65 and out["precision"] == 1.0


def test_loss_threshold_balanced_rule_separates() -> None:
    rng = np.random.default_rng(1)
    attack = LossThresholdAttack(rule="balanced").fit(*_losses(rng))
    assert -2.0 < attack.threshold < -1.0  # between the groups on the score (-loss) scale
    victim_in, victim_out = _losses(rng)
    assert (attack.score(victim_in) >= attack.threshold).all()
    assert (attack.score(victim_out) < attack.threshold).all()


def test_pixel_accuracy_threshold() -> None:
    rng = np.random.default_rng(2)
    member, nonmember = rng.uniform(0.9, 1.0, 100), rng.uniform(0.5, 0.8, 150)
    attack = PixelAccuracyThresholdAttack().fit(member, nonmember)
    assert 0.8 < attack.threshold < 0.9
    assert (attack.score(rng.uniform(0.9, 1.0, 50)) >= attack.threshold).all()
    assert (attack.score(rng.uniform(0.5, 0.8, 50)) < attack.threshold).all()


def test_state_round_trip() -> None:
    rng = np.random.default_rng(3)
    fitted = (
        LossThresholdAttack(rule="balanced").fit(*_losses(rng)),
        PixelAccuracyThresholdAttack().fit(rng.uniform(0.9, 1.0, 50), rng.uniform(0.5, 0.8, 50)),
    )
    for attack in fitted:
        again = type(attack).from_state(json.loads(json.dumps(attack.state())))
        assert again.threshold == attack.threshold and again.state() == attack.state()


def test_threshold_attacks_refuse_bad_statistics() -> None:
    with pytest.raises(SegleakError):
        LossThresholdAttack().fit(np.array([0.1, np.nan]), np.array([1.0]))
    with pytest.raises(SegleakError):
        PixelAccuracyThresholdAttack().fit(np.array([]), np.array([0.5]))
    with pytest.raises(SegleakError):
        LossThresholdAttack(rule="median")
