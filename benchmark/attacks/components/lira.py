"""LiRA (Carlini et al., S&P 2022, "Membership Inference Attacks From First Principles") on segmentation.

Statistic, and why this aggregation: per image, the mean over its labelled pixels of the logit-scaled
confidence of the ground-truth class, log p_y - log(1 - p_y) (benchmark.attacks.signals, "logit" over the
image). LiRA fits a Gaussian per image across models, so the statistic must be close to Gaussian across
models: the logit scaling does that per pixel (p_y near 1 is stretched out instead of piled up at 1), and
the mean over the image's pixels turns hundreds of strongly correlated pixels into ONE observation whose
spread across models is smooth and unimodal. Summing per-pixel log-likelihood ratios instead would count
correlated pixels as independent tests. The mean weighs classes by their area; dense LiRA
(`dense_lira`) models the classes or regions of an image separately. On label-only releases the image's
smoothed pixel accuracy is logit-scaled instead (signals.py).

offline: score = log Phi((t - mu_out) / sigma_out), the paper's one-sided test against the references that
never trained on the image; online: log N(t; mu_in, sigma_in) - log N(t; mu_out, sigma_out).
variance "global": one variance pooled within images over the whole bank (the paper's fixed variance, the
right choice with few references; the reference code's np.std over all examples would also count the
spread BETWEEN images, which we leave out); "per_example": each image's own sample variance where it has
at least two references on that side, else the global one.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from benchmark.attacks.reference import VARIANTS, BankView, ReferenceAttack, completed_means, moments
from benchmark.errors import SegleakError
from benchmark.params import Param
from benchmark.registry import ATTACKS

SD_FLOOR = 1e-3  # a per-image spread is kept above this share of the global one (ties on label-only outputs)


def spread(global_var: float, ss: np.ndarray, n: np.ndarray, per_example: bool) -> np.ndarray:
    """Standard deviations of the scored images: global, or each image's own where it has >= 2 values."""
    if not np.isfinite(global_var) or global_var <= 0:
        raise SegleakError("the reference bank is too small to estimate a variance (every image needs at least "
                           "two references on one side): add references")
    sd = np.full(len(n), np.sqrt(global_var))
    if per_example:
        with np.errstate(invalid="ignore", divide="ignore"):
            own = np.sqrt(ss / (n - 1))
        sd = np.where(n >= 2, own, sd)
    return np.maximum(sd, SD_FLOOR * np.sqrt(global_var))


@ATTACKS.register_module()
class LiRA(ReferenceAttack):
    name = "lira"
    order = 40
    label_param = "variant"
    params = {
        "variant": Param(str, default="offline", choices=VARIANTS,
                         help="offline: OUT references only; online: references trained on the query images too"),
        "variance": Param(str, default="global", choices=("global", "per_example")),
    }
    tunable = ("variance",)

    def bank_scores(self, view: BankView) -> np.ndarray:
        m = moments(view.refs, view.masks)
        mean_in, mean_out = completed_means(m)
        i, t = view.index, view.target
        per_example = self.values["variance"] == "per_example"
        if not self.online:
            sd = spread(m.var_out[0], m.ss_out[i, 0], m.n_out[i], per_example)
            return norm.logcdf((t - mean_out[i, 0]) / sd)
        sd_in = spread(m.var_all[0], m.ss_in[i, 0], m.n_in[i], per_example)
        sd_out = spread(m.var_all[0], m.ss_out[i, 0], m.n_out[i], per_example)
        return norm.logpdf(t, mean_in[i, 0], sd_in) - norm.logpdf(t, mean_out[i, 0], sd_out)
