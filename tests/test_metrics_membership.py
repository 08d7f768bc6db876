"""membership_metrics against scikit-learn, hand-computed cases and bootstrap coverage."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics, roc_curve
from benchmark.metrics.membership import best_balanced_threshold, bootstrap_auc

KEYS = {
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "tpr_at_1pct_fpr",
    "tpr_at_1pct_fpr_ci_low",
    "tpr_at_1pct_fpr_ci_high",
    "tpr_at_1pct_fpr_nonmembers_above",
    "tpr_at_0.1pct_fpr",
    "tpr_at_0.1pct_fpr_ci_low",
    "tpr_at_0.1pct_fpr_ci_high",
    "n_groups",
    "fragile",
    "balanced_accuracy",
    "precision",
    "recall",
    "n_members",
    "n_nonmembers",
    "threshold",
    "missing",
}


def _tied(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.4
    scores = rng.integers(0, 8, n) + member * rng.integers(0, 3, n)  # few distinct values: many ties
    return scores.astype(float), member


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_roc_equal_sklearn_with_ties(seed: int) -> None:
    scores, member = _tied(seed)
    out = membership_metrics(scores, member, n_bootstrap=0)
    assert set(out) == KEYS
    assert out["auc"] == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    fpr, tpr, thr = roc_curve(scores, member)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(member, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(thr, sk_thr)  # first threshold is +inf in both
    assert out["n_members"] == member.sum() and out["n_nonmembers"] == (~member).sum()


def test_tpr_at_fpr_by_hand_and_unresolvable_is_missing() -> None:
    # 100 non-members 0..99, members at 99.5 (beats all), 98.5 (beats 99 of them) and 50.
    nonmember = np.arange(100.0)
    member = np.array([99.5, 98.5, 50.0])
    scores = np.r_[member, nonmember]
    is_member = np.r_[np.ones(3, bool), np.zeros(100, bool)]
    out = membership_metrics(scores, is_member, n_bootstrap=0)
    # FPR <= 1%: threshold 98.5 lets 1 non-member (99) through -> FPR 0.01, TPR 2/3
    assert out["tpr_at_1pct_fpr"] == pytest.approx(2 / 3)
    assert out["tpr_at_1pct_fpr_nonmembers_above"] == 1
    # no interval without resamples; the fragility the 1 non-member implies
    assert out["tpr_at_1pct_fpr_ci_low"] is None and "n_bootstrap=0" in out["missing"]["tpr_at_1pct_fpr_ci_low"]
    assert "rests on 1 non-member" in out["fragile"]["tpr_at_1pct_fpr"]
    assert out["tpr_at_0.1pct_fpr"] is None
    assert out["missing"]["tpr_at_0.1pct_fpr"] == "needs >= 1000 non-members to resolve FPR 0.1%, have 100"
    assert "tpr_at_1pct_fpr" not in out["missing"]
    few = membership_metrics(scores[:60], is_member[:60], n_bootstrap=0)
    assert few["tpr_at_1pct_fpr"] is None and "have 57" in few["missing"]["tpr_at_1pct_fpr"]


def test_threshold_metrics() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    member = np.array([1, 1, 1, 0, 0, 0])
    given = membership_metrics(scores, member, threshold=0.5, n_bootstrap=0)
    # predicted members: 0.9, 0.8, 0.7 -> TP 2, FP 1; recall 2/3, TNR 2/3
    assert given["precision"] == pytest.approx(2 / 3) and given["recall"] == pytest.approx(2 / 3)
    assert given["balanced_accuracy"] == pytest.approx(2 / 3) and given["threshold"] == 0.5
    best = membership_metrics(scores, member, n_bootstrap=0)
    # cuts at 0.8 (TPR 2/3, FPR 0) and 0.4 (TPR 1, FPR 1/3) tie at 5/6: the higher one wins
    assert best["balanced_accuracy"] == pytest.approx(5 / 6)
    assert best_balanced_threshold(scores, member) == pytest.approx(0.75)  # midway between 0.8 and 0.7
    none = membership_metrics(scores, member, threshold=1.0, n_bootstrap=0)
    assert none["precision"] is None and "precision" in none["missing"] and none["recall"] == 0


def test_input_validation() -> None:
    with pytest.raises(SegleakError):
        membership_metrics([0.1, np.nan, 0.3], [1, 0, 1])
    with pytest.raises(SegleakError):
        membership_metrics([0.1, 0.2], [1, 0, 1])
    with pytest.raises(SegleakError):
        membership_metrics([0.1, 0.2], [1, 1])
    with pytest.raises(SegleakError):
        membership_metrics([0.1, 0.2], [1, 2])


def test_bootstrap_interval_covers_true_auc() -> None:
    d, n, reps = 1.0, 120, 50
    true_auc = 0.5 * (1 + math.erf(d / math.sqrt(2) / math.sqrt(2)))  # Phi(d / sqrt 2)
    rng = np.random.default_rng(1234)
    covered, widths = 0, []
    for i in range(reps):
        scores = np.r_[rng.normal(d, 1, n), rng.normal(0, 1, n)]
        member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
        out = membership_metrics(scores, member, n_bootstrap=500, seed=i)
        covered += out["auc_ci_low"] <= true_auc <= out["auc_ci_high"]
        widths.append(out["auc_ci_high"] - out["auc_ci_low"])
    assert covered / reps >= 0.85
    assert 0.05 < np.mean(widths) < 0.2  # not trivially wide


def test_bootstrap_is_seeded() -> None:
    scores, member = _tied(0)
    a = membership_metrics(scores, member, n_bootstrap=200, seed=3)
    b = membership_metrics(scores, member, n_bootstrap=200, seed=3)
    assert a == b
    assert a["auc_ci_low"] < a["auc"] < a["auc_ci_high"]


def _clustered(rng, n_groups: int, size: int, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of near-identical scores (near-duplicate frames): members' groups shifted by `shift`."""
    centre = rng.normal(0, 1, n_groups) + shift * (np.arange(n_groups) < n_groups // 2)
    scores = np.repeat(centre, size) + rng.normal(0, 0.05, n_groups * size)
    member = np.repeat(np.arange(n_groups) < n_groups // 2, size)
    return scores, member, np.repeat(np.arange(n_groups), size)


def test_cluster_bootstrap_widens_the_interval_to_the_number_of_groups() -> None:
    """Issue 12: 20 groups of 8 near-duplicates are 20 observations, not 160. The image-level interval is far
    too narrow (it misses chance under the null far more than 5% of the time); the group-level one is not."""
    rng = np.random.default_rng(0)
    image_misses = group_misses = 0
    for rep in range(40):
        scores, member, groups = _clustered(rng, 20, 8, shift=0.0)
        image = membership_metrics(scores, member, n_bootstrap=300, seed=rep)
        cluster = membership_metrics(scores, member, n_bootstrap=300, seed=rep, groups=groups)
        assert cluster["n_groups"] == 20 and image["n_groups"] == 160
        assert cluster["auc_ci_high"] - cluster["auc_ci_low"] > 1.8 * (image["auc_ci_high"] - image["auc_ci_low"])
        image_misses += not image["auc_ci_low"] <= 0.5 <= image["auc_ci_high"]
        group_misses += not cluster["auc_ci_low"] <= 0.5 <= cluster["auc_ci_high"]
    assert image_misses >= 10 and group_misses <= 5


def test_weighted_bootstrap_equals_ranking_each_resample() -> None:
    """The bootstrap weighs member/non-member pairs by group counts; on singletons its AUCs are the rank AUCs
    of the materialised resamples (same draws), so the shortcut changes nothing but the time."""
    scores, member = _tied(2, n=60)
    fast = bootstrap_auc(scores, member, n_bootstrap=50, seed=9)
    rng = np.random.default_rng(9)
    m_idx, n_idx = np.flatnonzero(member), np.flatnonzero(~member)
    all_m = rng.multinomial(len(m_idx), np.full(len(m_idx), 1 / len(m_idx)), size=50)
    all_n = rng.multinomial(len(n_idx), np.full(len(n_idx), 1 / len(n_idx)), size=50)
    slow = []
    for counts_m, counts_n in zip(all_m, all_n):
        s = np.r_[np.repeat(scores[m_idx], counts_m), np.repeat(scores[n_idx], counts_n)]
        y = np.r_[np.ones(len(m_idx), bool), np.zeros(len(n_idx), bool)]
        slow.append(roc_auc_score(y, s))
    np.testing.assert_allclose(fast, slow, atol=1e-12)
