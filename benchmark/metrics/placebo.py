"""Placebo verdicts over several placebo models: an interval that carries the variance between models.

A placebo model (a victim, or a LiRA-protocol target, trained on none of the images it is labelled with) is
one training draw: its AUC differs from 0.5 by that draw's luck as well as by the images'. An image bootstrap
of one model sees only the images (about +-0.05 at 48/100), while placebo models of one setting spread over
0.37-0.57, and every cell of one unlucky model fails together. So the verdict pools the scores of P placebo
models on the same images and resamples both: models with replacement, and image groups with replacement
(stratified by membership when every group is pure), each score weighted by its model's count times its
group's count. The percentile interval of the pooled AUC then contains chance with the stated confidence
under the null, whatever the split of variance between models and images
(tests/test_placebo_family.py measures it). With one model there is no between-model term: `n_models` says
so, and the verdict says how many per-cell exclusions chance alone would produce.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm, t

from benchmark.errors import SegleakError
from benchmark.metrics.membership import _group_codes, _resample_weights, _validate, _weighted_auc

CHANCE = 0.5


def model_image_bootstrap_auc(scores, is_member, models, groups=None, n_bootstrap: int = 1000,
                              seed: int = 0) -> np.ndarray:
    """Pooled AUCs of `n_bootstrap` resamples over placebo models (`models`: one label per score) and image
    groups (`groups`, images when None) at once."""
    s, m = _validate(scores, is_member)
    model_codes = _group_codes(models, len(s))
    n_models = model_codes.max() + 1
    rng = np.random.default_rng([seed, 5])
    parts = []
    for w in _resample_weights(_group_codes(groups, len(s)), m, n_bootstrap, seed):
        drawn = rng.multinomial(n_models, np.full(n_models, 1 / n_models), size=len(w))
        w = w * drawn[:, model_codes]
        w = w[(w[:, m].sum(axis=1) > 0) & (w[:, ~m].sum(axis=1) > 0)]
        parts.append(_weighted_auc(s, m, w))
    return np.concatenate(parts) if parts else np.empty(0)


def placebo_verdict(scores, is_member, models, groups=None, n_bootstrap: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> dict[str, Any]:
    """The pooled placebo AUC of a family (one cell's placebo models, or a protocol's placebo targets), its
    model-and-image bootstrap interval, and whether that interval contains chance."""
    s, m = _validate(scores, is_member)
    if not 0 < confidence < 1:
        raise SegleakError(f"confidence must be in (0, 1), got {confidence!r}")
    ones = np.ones((1, len(s)))
    aucs = model_image_bootstrap_auc(s, m, models, groups, n_bootstrap, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return {"auc": float(_weighted_auc(s, m, ones)[0]), "auc_ci_low": float(low), "auc_ci_high": float(high),
            "n_models": int(len(np.unique(np.asarray(models)))), "passed": bool(low <= CHANCE <= high)}


def expected_exclusions(n_cells: int, confidence: float = 0.95) -> float:
    """How many of `n_cells` independent per-cell intervals exclude chance under the null: (1 - confidence) n.
    Cells of one placebo model are positively correlated, so their exclusions come in bursts around this mean."""
    return (1 - confidence) * n_cells


def mean_interval(values, lows, highs, draws, confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of per-model figures (`values`, each with its own bootstrap interval `lows`/`highs`) over
    independent draws `draws` (seeds) and the models of each draw, and an interval for that mean, not a mean of
    per-model bounds. Models of one draw share its images: their mean has variance mean(se^2) (the image
    noise, which they may share, counted in full) + s^2/P (the spread between them). Draws are independent:
    the half-width is the larger of a t interval on the S draw means (S - 1 degrees of freedom: two or three
    seeds cannot pin their spread down, a normal quantile covered a known mean 82% of the time) and z times
    the within-draw standard error / sqrt(S), which guards against a lucky small spread. se = width / (2 z).
    A single figure keeps its own (bootstrap) interval."""
    values, lows, highs = (np.asarray(a, dtype=np.float64) for a in (values, lows, highs))
    draws = np.asarray(draws)
    if not (values.shape == lows.shape == highs.shape == draws.shape) or values.ndim != 1 or not len(values):
        raise SegleakError(f"mean_interval needs equal non-empty 1-D inputs, got shapes {values.shape}, "
                           f"{lows.shape}, {highs.shape}, {draws.shape}")
    if len(values) == 1:  # one model of one draw: its own (bootstrap) interval, not a normal approximation of it
        return float(values[0]), float(lows[0]), float(highs[0])
    z = float(norm.ppf(0.5 + confidence / 2))
    se2 = ((highs - lows) / (2 * z)) ** 2
    means, variances = [], []
    for draw in np.unique(draws):
        v, s = values[draws == draw], se2[draws == draw]
        means.append(v.mean())
        variances.append(s.mean() + (v.var(ddof=1) / len(v) if len(v) > 1 else 0.0))
    means_arr, n = np.array(means), len(means)
    spread = t.ppf(0.5 + confidence / 2, n - 1) * np.sqrt(means_arr.var(ddof=1) / n) if n > 1 else 0.0
    half = max(float(spread), z * float(np.sqrt(np.mean(variances) / n)))
    centre = float(means_arr.mean())
    return centre, centre - half, centre + half
