"""The one-run epsilon lower bound of Steinke, Nasr and Jagielski (NeurIPS 2023, "Privacy Auditing with One (1)
Training Run", Theorem 3.1 with its delta term, computed as their Algorithm 2).

Set-up: m canaries, each included in training independently with probability 1/2. The auditor ranks them by a
score (higher = "in"), guesses "in" for the top k, "out" for the bottom k and abstains on the rest: r = 2k
guesses, v of them correct. If training is (eps, delta)-DP, v is dominated by Binomial(r, e^eps / (1 + e^eps))
up to a delta term, so

    p(eps) = P[Binomial(r, q_eps) >= v] + 2 m delta max_{1 <= i <= v} (1/i) P[v - i <= Binomial(r, q_eps) < v]

is a p-value for "training is (eps, delta)-DP". The lower bound is the largest eps that the count rejects at
the test's level: every eps' <= eps has p(eps') < level. (Algorithm 2 bisects p, which assumes p grows with eps;
the delta term can make it dip, so the bound here is the start of the rejected range, found on a grid of step
`GRID_STEP` and refined by bisection inside one step.)

Choosing k (and the score) after seeing the counts would report the luckiest of several tests. Every
(score, k) pair tried is a separate test at level (1 - confidence) / n_tests (Bonferroni), so the largest of
their bounds is a lower bound at the stated confidence: P[any bound > true eps] <= sum of the levels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from benchmark.errors import SegleakError

GRID_STEP = 0.05
EPS_CAP = 64.0  # q_eps = 1 - 1.6e-28: a count that rejects this is beyond float64 (no finite m reaches it)


def _check(m: int, r: int, v: int, delta: float) -> None:
    if not 0 <= v <= r <= m:
        raise SegleakError(f"audit counts must satisfy 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if not 0 <= delta <= 1:
        raise SegleakError(f"audit delta must be in [0, 1], got {delta}")


def p_values(m: int, r: int, v: int, eps: np.ndarray, delta: float) -> np.ndarray:
    """The p-value of v correct out of r guesses on m canaries under (eps, delta)-DP, for each eps given."""
    _check(m, r, v, delta)
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if v == 0:
        return np.ones_like(eps)
    q = 1.0 / (1.0 + np.exp(-eps))  # the accuracy of eps-DP randomized response
    beta = binom.sf(v - 1, r, q)  # P[Binomial(r, q) >= v]
    below = binom.pmf(v - np.arange(1, v + 1)[:, None], r, q[None, :])  # P[Binomial = v - i], i = 1..v
    alpha = (np.cumsum(below, axis=0) / np.arange(1, v + 1)[:, None]).max(axis=0)
    return np.minimum(1.0, beta + alpha * delta * 2 * m)


def eps_lower_bound(m: int, r: int, v: int, delta: float, level: float) -> float:
    """The largest eps such that v correct out of r guesses rejects (eps', delta)-DP at `level` for every
    eps' <= eps; 0 when even eps = 0 is not rejected."""
    _check(m, r, v, delta)
    if not 0 < level < 1:
        raise SegleakError(f"audit test level must be in (0, 1), got {level}")

    def rejected(eps: np.ndarray) -> np.ndarray:
        return p_values(m, r, v, eps, delta) < level

    if not rejected(np.array([0.0]))[0]:
        return 0.0
    high = 1.0
    while high < EPS_CAP and rejected(np.array([high]))[0]:
        high = min(2 * high, EPS_CAP)
    grid = np.arange(0.0, high + GRID_STEP / 2, GRID_STEP)
    ok = rejected(grid)
    if ok.all():
        return EPS_CAP
    first = int(np.argmin(ok))  # the first eps on the grid that the count does not reject
    low, high = grid[first - 1], grid[first]
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if rejected(np.array([mid]))[0] else (low, mid)
    return float(low)


def ks_for(m: int) -> list[int]:
    """The guess counts tried per side: powers of two up to m // 2, and m // 2 itself."""
    if m < 2:
        raise SegleakError(f"an audit needs at least 2 canaries (one guess per side), got {m}")
    half = m // 2
    return sorted({2**j for j in range(int(math.log2(half)) + 1)} | {half})


def correct_guesses(scores: np.ndarray, included: np.ndarray, k: int, tiebreak: np.ndarray) -> int:
    """Correct guesses when the top-k scores are called "in" and the bottom k "out". Ties are ordered by
    `tiebreak`, which must not depend on the inclusion draw (an id-seeded permutation)."""
    order = np.lexsort((tiebreak, scores))  # ascending score, ties by tiebreak
    return int(included[order[-k:]].sum() + (~included[order[:k]]).sum())


@dataclass(frozen=True)
class Test:
    """One (score, k) test: 2k guesses, `correct` of them right, and the bound it gives at the test's level."""

    score: str
    k: int
    guesses: int
    correct: int
    eps: float


@dataclass(frozen=True)
class AuditBound:
    """The audit of one set of canaries: the best test's bound (valid at `confidence` after the correction),
    every test tried, and the ceiling (the bound if every guess of the best-placed test were right)."""

    m: int
    n_included: int
    confidence: float
    delta: float
    level: float  # per test
    tests: tuple[Test, ...]
    ceiling: float

    @property
    def best(self) -> Test:
        """The test with the largest bound; among equal bounds (0 when nothing is rejected) the one with the
        most guesses, so a bound of 0 comes with the count over the most canaries."""
        return max(self.tests, key=lambda t: (t.eps, t.guesses))

    @property
    def eps_lower(self) -> float:
        return self.best.eps


def audit_bound(scores: Mapping[str, np.ndarray], included: np.ndarray, *, delta: float, confidence: float = 0.95,
                tiebreak: np.ndarray | None = None, ks: Sequence[int] | None = None) -> AuditBound:
    """The epsilon lower bound from per-canary scores (name -> [m], higher = "in") and the inclusion draw."""
    included = np.asarray(included, dtype=bool)
    m = len(included)
    if not scores:
        raise SegleakError("an audit needs at least one score")
    for name, values in scores.items():
        if np.shape(values) != (m,) or not np.isfinite(values).all():
            raise SegleakError(f"audit score {name!r} must be {m} finite values, got shape {np.shape(values)}")
    if not 0 < confidence < 1:
        raise SegleakError(f"audit confidence must be in (0, 1), got {confidence}")
    ks = list(ks or ks_for(m))
    tiebreak = np.arange(m) if tiebreak is None else np.asarray(tiebreak)
    level = (1 - confidence) / (len(scores) * len(ks))
    tests = []
    for name, values in scores.items():
        for k in ks:
            v = correct_guesses(np.asarray(values, dtype=np.float64), included, k, tiebreak)
            tests.append(Test(name, k, 2 * k, v, eps_lower_bound(m, 2 * k, v, delta, level)))
    ceiling = max(eps_lower_bound(m, 2 * k, 2 * k, delta, level) for k in ks)
    return AuditBound(m, int(included.sum()), confidence, delta, level, tuple(tests), ceiling)


def audit_by_kind(scores: Mapping[str, np.ndarray], kinds: Sequence[str], included: np.ndarray, *, delta: float,
                  confidence: float = 0.95, tiebreak: np.ndarray | None = None) -> dict[str, AuditBound]:
    """The audit over all canaries ("all", the headline: one family of tests) and over each kind on its own
    (each at the same confidence, to compare the kinds). `scores` must put the kinds on one scale
    (`benchmark.audit.scores.within_kind`) for the guesses over all canaries to mix them."""
    kinds = np.asarray(kinds)
    included = np.asarray(included, dtype=bool)
    tiebreak = np.arange(len(kinds)) if tiebreak is None else np.asarray(tiebreak)
    out = {"all": audit_bound(scores, included, delta=delta, confidence=confidence, tiebreak=tiebreak)}
    for kind in dict.fromkeys(kinds.tolist()):
        mask = kinds == kind
        out[kind] = audit_bound({n: np.asarray(s)[mask] for n, s in scores.items()}, included[mask], delta=delta,
                                confidence=confidence, tiebreak=tiebreak[mask])
    return out
