"""Attacks without a network: one threshold on a per-image statistic (see statistics.py), chosen on
the shadow model's members / non-members and then applied to the victim's queries.

Score convention: higher = more likely a member; `threshold` lives on the score scale, so
`score(stat) >= threshold` is the membership prediction and the grid passes `threshold` to
`membership_metrics`.
"""

import numpy as np

from benchmark.errors import SegleakError
from benchmark.metrics.membership import best_balanced_threshold


def _stat(values, name: str) -> np.ndarray:
    """A finite, non-empty 1-D float64 array (fitting on NaN statistics would silently shift a threshold)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise SegleakError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise SegleakError(f"{name} has NaN/inf entries (images without labelled pixels?): drop them first")
    return arr


def _fit_balanced(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    scores = np.concatenate([member_scores, nonmember_scores])
    is_member = np.r_[np.ones(len(member_scores), bool), np.zeros(len(nonmember_scores), bool)]
    return best_balanced_threshold(scores, is_member)


class LossThresholdAttack:
    """Global loss threshold (Chobola et al. 2022): members have lower mean pixel CE.

    Feed it `statistics.mean_pixel_loss`. score = -loss. With rule "member_mean" (the paper's rule) the
    threshold is minus the mean loss of the shadow's members, so non-members are not needed but are
    accepted for a uniform API; rule "balanced" maximises balanced accuracy on shadow data instead.
    """

    RULES = ("member_mean", "balanced")

    def __init__(self, rule: str = "member_mean") -> None:
        if rule not in self.RULES:
            raise SegleakError(f"unknown loss-threshold rule {rule!r}; known: {list(self.RULES)}")
        self.rule = rule
        self.threshold: float | None = None

    def fit(self, member_stat, nonmember_stat) -> "LossThresholdAttack":
        """Choose the threshold from the shadow model's per-image mean losses."""
        member = self.score(_stat(member_stat, "member_stat"))
        nonmember = self.score(_stat(nonmember_stat, "nonmember_stat"))
        self.threshold = (
            float(member.mean()) if self.rule == "member_mean" else _fit_balanced(member, nonmember)
        )
        return self

    def score(self, stat) -> np.ndarray:
        """Membership score -loss per image (NaN passes through; metrics refuse it)."""
        return -np.asarray(stat, dtype=np.float64)

    def state(self) -> dict:
        """JSON-able fitted state, so the grid can store the attack and score victims later."""
        return {"rule": self.rule, "threshold": self.threshold}

    @classmethod
    def from_state(cls, state: dict) -> "LossThresholdAttack":
        """Rebuild a fitted attack from `state()`."""
        attack = cls(rule=state["rule"])
        attack.threshold = state["threshold"]
        return attack


class PixelAccuracyThresholdAttack:
    """Label-only attack: members' predictions match their ground truth better.

    Feed it `statistics.pixel_accuracy`; it needs only the top-1 label, so it works on argmax outputs.
    score = accuracy; the threshold maximises balanced accuracy on the shadow's members / non-members.
    """

    def __init__(self) -> None:
        self.threshold: float | None = None

    def fit(self, member_stat, nonmember_stat) -> "PixelAccuracyThresholdAttack":
        """Choose the threshold on the shadow model's per-image pixel accuracies."""
        member = _stat(member_stat, "member_stat")
        nonmember = _stat(nonmember_stat, "nonmember_stat")
        self.threshold = _fit_balanced(self.score(member), self.score(nonmember))
        return self

    def score(self, stat) -> np.ndarray:
        """Membership score = pixel accuracy per image."""
        return np.asarray(stat, dtype=np.float64)

    def state(self) -> dict:
        """JSON-able fitted state, so the grid can store the attack and score victims later."""
        return {"threshold": self.threshold}

    @classmethod
    def from_state(cls, state: dict) -> "PixelAccuracyThresholdAttack":
        """Rebuild a fitted attack from `state()`."""
        attack = cls()
        attack.threshold = state["threshold"]
        return attack
