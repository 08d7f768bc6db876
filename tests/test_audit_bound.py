"""The one-run epsilon lower bound (Steinke, Nasr, Jagielski 2023): checked against hand computations and
exact binomial tails, its correction for choosing the score and k, and its soundness on the extremal
epsilon-DP mechanism (randomized response on each canary's inclusion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from benchmark.audit.bound import audit_bound, correct_guesses, eps_lower_bound, ks_for, p_values
from benchmark.errors import SegleakError


def _logit(q: float) -> float:
    return math.log(q / (1 - q))


def _solve(tail, level: float) -> float:
    """The eps where a tail probability (increasing in eps) reaches `level`, by plain bisection."""
    low, high = 0.0, 30.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if tail(1 / (1 + math.exp(-mid))) < level else (low, mid)
    return low


def test_every_guess_right_matches_the_closed_form():
    # 10 of 10 right, delta = 0: p(eps) = q^10, so the bound is logit(0.05^(1/10)) = 1.0519
    assert eps_lower_bound(10, 10, 10, 0.0, 0.05) == pytest.approx(_logit(0.05 ** 0.1), abs=1e-6)
    assert eps_lower_bound(10, 10, 10, 0.0, 0.05) == pytest.approx(1.0519, abs=1e-4)


def test_one_wrong_guess_matches_the_binomial_tail_by_hand():
    # 9 of 10 right: P[Bin(10, q) >= 9] = q^10 + 10 q^9 (1 - q)
    expected = _solve(lambda q: q**10 + 10 * q**9 * (1 - q), 0.05)
    assert eps_lower_bound(20, 10, 9, 0.0, 0.05) == pytest.approx(expected, abs=1e-6)
    assert expected < eps_lower_bound(20, 10, 10, 0.0, 0.05)


def test_the_delta_term_by_hand():
    # m = r = v = 2: alpha = max(P[Bin = 1], (P[Bin = 1] + P[Bin = 0]) / 2), p = q^2 + 2 m delta alpha
    eps, delta = np.array([0.0, 0.5, 1.0, 3.0]), 0.01
    q = 1 / (1 + np.exp(-eps))
    one, zero = 2 * q * (1 - q), (1 - q) ** 2
    expected = np.minimum(1, q**2 + 4 * delta * np.maximum(one, (one + zero) / 2))
    assert p_values(2, 2, 2, eps, delta) == pytest.approx(expected)
    assert p_values(50, 20, 18, eps, 0.0) == pytest.approx(binom.sf(17, 20, q))  # delta = 0: the bare tail


def test_delta_lowers_the_bound_and_zero_correct_gives_zero():
    assert eps_lower_bound(1000, 200, 190, 1e-3, 0.05) < eps_lower_bound(1000, 200, 190, 0.0, 0.05)
    assert eps_lower_bound(100, 20, 0, 1e-5, 0.05) == 0.0
    assert eps_lower_bound(100, 20, 10, 1e-5, 0.05) == 0.0  # chance accuracy rejects nothing


def test_the_bound_rejects_every_smaller_epsilon():
    for m, r, v, delta in [(100, 40, 36, 1e-5), (1000, 600, 560, 1e-3), (30, 30, 29, 0.0)]:
        bound = eps_lower_bound(m, r, v, delta, 0.01)
        below = np.linspace(0, bound, 200)
        assert (p_values(m, r, v, below, delta) < 0.01).all()
        assert p_values(m, r, v, np.array([bound + 1e-6]), delta)[0] >= 0.01 - 1e-9


def test_guesses_take_the_top_k_in_and_the_bottom_k_out():
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3])
    included = np.array([False, True, False, True, True, False])
    # k = 2: "in" = ids 1, 4 (both in); "out" = ids 0, 3 (0 out, 3 in): 3 correct
    assert correct_guesses(scores, included, 2, np.arange(6)) == 3
    # ties are ordered by the tiebreak, never by position in the draw
    flat = np.zeros(4)
    assert correct_guesses(flat, np.array([True, True, False, False]), 1, np.array([3, 2, 1, 0])) == 2


def test_ks_are_powers_of_two_and_half():
    assert ks_for(96) == [1, 2, 4, 8, 16, 32, 48]
    assert ks_for(2) == [1]
    with pytest.raises(SegleakError, match="at least 2 canaries"):
        ks_for(1)


def test_choosing_the_score_and_k_is_paid_for():
    rng = np.random.default_rng(0)
    included = rng.permutation(np.arange(64) < 32)  # 32 in, 32 out: k = 32 can be right on every guess
    perfect = np.where(included, 1.0, -1.0) + rng.normal(0, 0.01, 64)
    one = audit_bound({"a": perfect}, included, delta=0.0)
    two = audit_bound({"a": perfect, "b": -perfect}, included, delta=0.0)
    assert one.level == pytest.approx(0.05 / len(ks_for(64)))
    assert two.level == pytest.approx(one.level / 2)
    assert two.eps_lower < one.eps_lower  # the same best test, at a stricter level
    assert one.eps_lower == pytest.approx(one.ceiling)  # every guess right reaches the ceiling
    assert one.best.correct == one.best.guesses


def test_no_leakage_gives_a_positive_bound_at_most_five_percent_of_the_time_exactly():
    # scores that ignore the inclusion draw (a model that never saw the canaries): for each test the count is
    # exactly Binomial(2k, 1/2), so P[bound > 0] <= sum over tests of P[Bin(2k, 1/2) >= the rejecting count]
    m, scores_tried = 96, 2
    ks = ks_for(m)
    level = 0.05 / (scores_tried * len(ks))
    total = 0.0
    for k in ks:
        rejecting = [v for v in range(2 * k + 1) if eps_lower_bound(m, 2 * k, v, 1e-5, level) > 0]
        if rejecting:
            total += binom.sf(min(rejecting) - 1, 2 * k, 0.5)
    assert total * scores_tried <= 0.05


def _randomized_response(eps: float, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The extremal eps-DP mechanism: each canary's inclusion reported truthfully w.p. e^eps / (1 + e^eps)."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-eps))
    reported = np.where(truthful, included, ~included)
    return reported.astype(float) + rng.normal(0, 1e-3, m), included


def test_randomized_response_bound_stays_below_its_epsilon():
    rng = np.random.default_rng(1)
    eps, trials = 1.0, 300
    bounds = [audit_bound({"rr": s}, inc, delta=0.0).eps_lower
              for s, inc in (_randomized_response(eps, 100, rng) for _ in range(trials))]
    assert np.mean(np.array(bounds) > eps) <= 0.05
    assert np.median(bounds) > 0  # the audit has power against a mechanism that leaks


def test_randomized_response_bound_is_tight_with_many_canaries():
    rng = np.random.default_rng(2)
    bounds = [audit_bound({"rr": s}, inc, delta=1e-5).eps_lower
              for s, inc in (_randomized_response(2.0, 1000, rng) for _ in range(5))]
    assert all(1.4 < b < 2.0 for b in bounds), bounds


def test_bad_input_is_named():
    with pytest.raises(SegleakError, match="correct <= guesses <= canaries"):
        eps_lower_bound(10, 12, 5, 0.0, 0.05)
    with pytest.raises(SegleakError, match="delta"):
        eps_lower_bound(10, 10, 5, 2.0, 0.05)
    with pytest.raises(SegleakError, match="score 'a' must be 4 finite values"):
        audit_bound({"a": np.array([1.0, np.nan, 0.0, 0.0])}, np.array([1, 0, 1, 0], bool), delta=0.0)


def test_scores_read_the_release_in_the_canaries_order():
    import torch

    from benchmark.audit.scores import canary_scores
    from benchmark.models.release import Released

    labels = torch.zeros(3, 2, 2, dtype=torch.uint8)

    def release(p_true: list[float], ids: list[str]) -> Released:
        p = torch.tensor(p_true).view(3, 1, 1, 1).expand(3, 1, 2, 2)
        return Released(ids, torch.log(torch.cat([p, 1 - p], dim=1)), labels)

    audited = release([0.9, 0.5, 0.99], ["c", "a", "b"])
    reference = release([0.6, 0.5, 0.5], ["a", "b", "c"])
    scores = canary_scores(["loss", "calibrated_loss"], audited, reference, ["a", "b", "c"])
    assert scores["loss"] == pytest.approx(np.log([0.5, 0.99, 0.9]))
    assert scores["calibrated_loss"] == pytest.approx(-np.log([0.6, 0.5, 0.5]) + np.log([0.5, 0.99, 0.9]))
    with pytest.raises(SegleakError, match="needs a reference"):
        canary_scores(["calibrated_loss"], audited, None, ["a", "b", "c"])
    with pytest.raises(SegleakError, match="unknown audit score 'lira'"):
        canary_scores(["lira"], audited, reference, ["a"])


def test_within_kind_scaling_keeps_each_kinds_order_and_lets_the_pool_mix_kinds():
    from benchmark.audit.scores import within_kind

    rng = np.random.default_rng(3)
    kinds = np.array(["natural"] * 20 + ["permuted"] * 20)
    included = rng.permutation(np.arange(40) % 2 == 0)
    # a perfectly separating score per kind, on two very different scales
    raw = np.where(included, 1.0, 0.0) + rng.normal(0, 0.05, 40)
    raw = np.where(kinds == "permuted", 10 * raw + 5, raw)
    scaled = within_kind({"s": raw}, kinds)["s"]
    for kind in ("natural", "permuted"):
        mask = kinds == kind
        assert (np.argsort(scaled[mask]) == np.argsort(raw[mask])).all()
    k = 20  # every in-canary called in, every out-canary out: possible only once the kinds share a scale
    assert correct_guesses(scaled, included, k, np.arange(40)) == 40
    assert correct_guesses(raw, included, k, np.arange(40)) < 40


def test_audit_by_kind_gives_the_pool_and_each_kind_on_its_own():
    from benchmark.audit.bound import audit_by_kind

    rng = np.random.default_rng(4)
    kinds = np.array(["natural", "permuted"] * 16)
    included = rng.random(32) < 0.5
    scores = {"s": np.where(included & (kinds == "permuted"), 2.0, 0.0) + rng.normal(0, 0.1, 32)}
    bounds = audit_by_kind(scores, kinds, included, delta=1e-5)
    assert list(bounds) == ["all", "natural", "permuted"]
    assert bounds["all"].m == 32 and bounds["natural"].m == bounds["permuted"].m == 16
    alone = audit_bound({"s": scores["s"][kinds == "permuted"]}, included[kinds == "permuted"], delta=1e-5,
                        tiebreak=np.arange(32)[kinds == "permuted"])
    assert bounds["permuted"].tests == alone.tests
