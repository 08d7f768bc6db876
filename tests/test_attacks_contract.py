"""Every registered attack passes the same contract on small synthetic releases, so a new attack is
tested the moment it is registered: it fits on the attacker's data alone, scores a target without its
membership, separates members when the outputs carry a signal, sits at chance when they carry none, and is
deterministic for a seed. Then the threshold attacks' own rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.attacks.base import AttackerData, Observed, calibration_split
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics
from benchmark.models.release import Released
from benchmark.registry import ATTACKS

C, H, W = 5, 16, 16
ATTACK_TRAIN = {"crop": 8, "epochs": 3, "n_crops_train": 4, "n_crops_test": 4, "batch_size": 16}
SHADOW_ONLY = [name for name in ATTACKS.names() if ATTACKS.lookup(name).needs == {"shadow"}]


def release(n_member: int, n_nonmember: int, seed: int, signal: float = 2.0, prefix: str = "img") -> Observed:
    """Members' true class gets `signal` more logit than non-members' (0: no membership signal at all)."""
    g = torch.Generator().manual_seed(seed)
    n = n_member + n_nonmember
    labels = torch.randint(0, C, (n, H, W), generator=g)
    logits = torch.randn(n, C, H, W, generator=g)
    boost = torch.where(torch.arange(n) < n_member, 1.0 + signal, 1.0)[:, None, None]
    logits.scatter_add_(1, labels[:, None].long(), (boost + 0.3 * torch.randn(n, H, W, generator=g))[:, None])
    is_member = np.arange(n) < n_member
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    return Observed(Released(ids, torch.log_softmax(logits, 1), labels.to(torch.uint8)), is_member)


def fitted_scores(name: str, tmp_path: Path, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    attack = ATTACKS.lookup(name)(attack_train=ATTACK_TRAIN)
    shadow = release(30, 30, seed, signal, "shadow")
    fitted = attack.fit_and_calibrate(AttackerData(shadow=shadow), tmp_path, seed, 0.25)
    target = release(30, 30, seed + 100, signal, "victim")
    blind_target = Observed(target.released)  # the target's membership is never handed over
    return attack.score(fitted.state, tmp_path, blind_target, seed), target.is_member, fitted.state


@pytest.mark.parametrize("name", SHADOW_ONLY)
def test_attack_separates_members_from_a_leaky_release(name: str, tmp_path: Path) -> None:
    scores, member, _ = fitted_scores(name, tmp_path, signal=2.0)
    assert scores.shape == member.shape and np.isfinite(scores).all()
    assert membership_metrics(scores, member, n_bootstrap=0)["auc"] > 0.8


@pytest.mark.parametrize("name", SHADOW_ONLY)
def test_attack_is_at_chance_without_a_signal(name: str, tmp_path: Path) -> None:
    scores, member, _ = fitted_scores(name, tmp_path, signal=0.0)
    out = membership_metrics(scores, member, seed=0)
    assert out["auc_ci_low"] <= 0.5 <= out["auc_ci_high"], out["auc"]


@pytest.mark.parametrize("name", SHADOW_ONLY)
def test_attack_is_deterministic_for_a_seed(name: str, tmp_path: Path) -> None:
    first, _, state = fitted_scores(name, tmp_path / "a", signal=1.0)
    second, _, again = fitted_scores(name, tmp_path / "b", signal=1.0)
    assert np.array_equal(first, second) and state == again


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_declares_what_the_grid_needs(name: str) -> None:
    cls = ATTACKS.lookup(name)
    attack = cls()
    assert attack.name == name and isinstance(attack.label, str) and attack.label.startswith(name)
    assert cls.needs and isinstance(cls.order, int)
    for key, param in cls.params.items():
        assert param.required or key in attack.values or param.default is None
    with pytest.raises(SegleakError):
        cls(unknown_parameter=1)


def test_calibration_split_is_stratified_and_seeded() -> None:
    member = np.r_[np.ones(40, bool), np.zeros(20, bool)]
    held = calibration_split(member, 0.25, seed=3)
    assert held[member].sum() == 10 and held[~member].sum() == 5
    assert np.array_equal(held, calibration_split(member, 0.25, seed=3))
    assert not np.array_equal(held, calibration_split(member, 0.25, seed=4))
    with pytest.raises(SegleakError, match="at least 2"):
        calibration_split(np.array([True, False, False]), 0.25, seed=0)


def test_loss_threshold_member_mean_rule(tmp_path: Path) -> None:
    attack = ATTACKS.lookup("loss_threshold")()
    shadow = release(30, 30, 0)
    state = attack.fit(AttackerData(shadow=shadow), tmp_path, 0)
    member_scores = attack.score(state, tmp_path, shadow, 0)[shadow.is_member]
    assert attack.threshold(state) == pytest.approx(member_scores.mean())
    assert ATTACKS.lookup("loss_threshold")(rule="balanced").threshold(state) is None  # chosen on calibration
    with pytest.raises(SegleakError):
        ATTACKS.lookup("loss_threshold")(rule="median")


def test_statistic_attacks_refuse_images_without_labels(tmp_path: Path) -> None:
    shadow = release(4, 4, 0)
    shadow.released.labels[0] = 255
    for name in ("loss_threshold", "pixel_accuracy"):
        attack = ATTACKS.lookup(name)()
        with pytest.raises(SegleakError, match="no labelled pixel"):
            attack.score(attack.fit(AttackerData(shadow=shadow), tmp_path, 0), tmp_path, shadow, 0)


def test_patch_attack_refuses_a_crop_larger_than_the_map(tmp_path: Path) -> None:
    attack = ATTACKS.lookup("patch")(attack_train={**ATTACK_TRAIN, "crop": 32})
    with pytest.raises(SegleakError, match="larger than the released 16x16"):
        attack.fit(AttackerData(shadow=release(4, 4, 0)), tmp_path, 0)
