"""Dense LiRA: an image is many correlated pixels, so model a VECTOR of its statistics, not one number.

Per image, the mean logit-scaled confidence of each class present (groups "class", >= 4 pixels) or of each
cell of an r x r grid (groups "region"); signals.py. Across references the vector is Gaussian with a
per-image mean and one covariance shared by all images (per-image covariances would need far more
references than dimensions): Sigma = D R D, with D the per-dimension within-image spreads pooled over the
bank, and R a shrunk correlation: a `rank`-factor model of the pooled residual correlation (pairwise over
the images where both dimensions exist), i.e. diagonal plus low rank, every dimension keeping at least
PSI_MIN of its variance outside the factors. An image uses the sub-vector of the dimensions it has (a Gaussian's marginal).

offline: the one-sided test along the direction members move, delta = the bank's mean IN - OUT shift (from
the pool images, where the references are IN and OUT): z = delta' S^-1 (v - mu_out) / sqrt(delta' S^-1
delta), score log Phi(z); in one dimension it is offline LiRA. online: the log-likelihood ratio of two
Gaussians with a shared covariance, (mu_in - mu_out)' S^-1 (v - (mu_in + mu_out) / 2); in one dimension it
is online LiRA with a global variance.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from benchmark.attacks.reference import VARIANTS, BankView, Moments, ReferenceAttack, completed_means, moments
from benchmark.attacks.signals import group_signals
from benchmark.errors import SegleakError
from benchmark.models.release import Released
from benchmark.params import Param
from benchmark.registry import ATTACKS

PSI_MIN = 0.05  # each dimension keeps at least this share of unique (non-factor) variance
VAR_FLOOR = 1e-6  # a dimension's variance is at least this share of the median dimension's


def residual_rows(values: np.ndarray, masks: np.ndarray, m: Moments, online: bool) -> np.ndarray:
    """Within-image residuals `[rows, d]` (NaN where a dimension is absent) of every reference on a side with
    at least two references (OUT only for the offline variant)."""
    sides = [(~masks, m.mean_out, m.n_out)] + ([(masks, m.mean_in, m.n_in)] if online else [])
    rows = [(values - mean[None])[side & (n >= 2)[None]] for side, mean, n in sides]
    return np.concatenate(rows)


def shrunk_correlation(residuals: np.ndarray, rank: int, iterations: int = 50) -> np.ndarray:
    """Diagonal plus low rank: a `rank`-factor model of the pairwise residual correlation (principal axis
    factoring: the factors of the correlation with its diagonal replaced by the shared variances, iterated),
    unit diagonal."""
    present = ~np.isnan(residuals)
    z = np.where(present, residuals, 0.0)
    cross = z.T @ z
    squares = (z**2).T @ present  # [a, b]: sum of r_a^2 over the rows where b exists
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cross / np.sqrt(squares * squares.T)
    corr = np.nan_to_num((corr + corr.T) / 2)
    np.fill_diagonal(corr, 1.0)
    shared = np.ones(len(corr))
    loadings = np.zeros((len(corr), 0))
    for _ in range(iterations if rank else 0):
        reduced = corr.copy()
        np.fill_diagonal(reduced, shared)
        values, vectors = np.linalg.eigh(reduced)
        top = np.argsort(values)[::-1][:rank]
        top = top[values[top] > 0]
        loadings = vectors[:, top] * np.sqrt(values[top])
        # a dimension the factors explain almost fully keeps PSI_MIN of unique variance
        loadings *= np.sqrt(np.minimum(1.0, (1.0 - PSI_MIN) / np.maximum((loadings**2).sum(1), 1e-300)))[:, None]
        shared = (loadings**2).sum(1)
    common = loadings @ loadings.T
    return common + np.diag(1.0 - np.diag(common))


@ATTACKS.register_module()
class DenseLiRA(ReferenceAttack):
    name = "dense_lira"
    order = 45
    label_param = "variant"
    params = {
        "variant": Param(str, default="offline", choices=VARIANTS),
        "groups": Param(str, default="class", choices=("class", "region")),
        "regions": Param(int, default=4, low=1, help="groups=region: an r x r grid of the map"),
        "rank": Param(int, default=2, low=0, help="factors of the shared correlation (0: diagonal)"),
    }
    tunable = ("rank",)

    def signals(self, released: Released) -> np.ndarray:
        return group_signals(released, "logit", self.values["groups"], self.values["regions"])

    def covariance(self, view: BankView, m: Moments) -> np.ndarray:
        variance = m.var_all if self.online else m.var_out
        positive = variance[np.isfinite(variance) & (variance > 0)]
        if not len(positive):
            raise SegleakError("the reference bank is too small to estimate a covariance (no dimension varies "
                               "across references): add references")
        # a dimension that never varied (label-only outputs of a class every reference gets right) or never
        # had two references on a side gets a floor, not a zero that would make the covariance singular
        floor = VAR_FLOOR * np.median(positive)
        sd = np.sqrt(np.where(np.isfinite(variance), np.maximum(variance, floor), np.median(positive)))
        corr = shrunk_correlation(residual_rows(view.refs, view.masks, m, self.online), self.values["rank"])
        return corr * sd[:, None] * sd[None, :]

    def bank_scores(self, view: BankView) -> np.ndarray:
        m = moments(view.refs, view.masks)
        sigma = self.covariance(view, m)
        mean_in, mean_out = completed_means(m)
        direction = m.shift if np.abs(m.shift).sum() > 0 else np.ones_like(m.shift)
        target = view.target if view.target.ndim == 2 else view.target[:, None]
        scores = np.empty(len(view.index))
        for n, (i, v) in enumerate(zip(view.index, target)):
            dims = ~np.isnan(v) & ~np.isnan(mean_out[i])
            cov = sigma[np.ix_(dims, dims)]
            if self.online:
                gap = mean_in[i, dims] - mean_out[i, dims]
                scores[n] = gap @ np.linalg.solve(cov, v[dims] - (mean_in[i, dims] + mean_out[i, dims]) / 2)
            else:
                weights = np.linalg.solve(cov, direction[dims])
                scale = np.sqrt(max(direction[dims] @ weights, 1e-300))
                scores[n] = norm.logcdf(weights @ (v[dims] - mean_out[i, dims]) / scale)
        return scores
