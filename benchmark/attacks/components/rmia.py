"""RMIA (Zarifzadeh, Liu, Shokri, ICML 2024, "Low-Cost High-Power Membership Inference Attacks"), offline.

Pr(x|theta) = exp(mean over the image's labelled pixels of log p_y): the geometric mean of its pixels' p_y
(on label-only releases, the smoothed pixel accuracy; signals.py). Pr(x) = ((1 + a) * mean_OUT Pr(x|theta_k)
+ (1 - a)) / 2: the OUT references' mean, with Pr_IN approximated by a * Pr_OUT + (1 - a) (the paper's
offline approximation; `a` is tuned on the attacker's references, the paper's CIFAR-10 value is near 0.3).
The same estimate serves the population images z (the attacker's pool, through the references that did not
train on each). score(x) = the share of z with [Pr(x|theta) / Pr(x)] / [Pr(z|theta) / Pr(z)] >= gamma, x never
compared with itself. Images with the same share are ordered by their own likelihood ratio (a tie-break
smaller than one step of the share, so the paper's ranking is refined, never changed): with a population
of tens of images the share alone would tie many images and blur low false-positive rates.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from benchmark.attacks.reference import BankView, ReferenceAttack
from benchmark.params import Param
from benchmark.registry import ATTACKS


def log_likelihood_ratio(target: np.ndarray, refs: np.ndarray, masks: np.ndarray, a: float) -> np.ndarray:
    """log Pr(x|theta) - log Pr(x) for log-signals `target [n]`, `refs [K, n]` (OUT references; all of them
    where an image has none)."""
    out = ~masks
    none = out.sum(0) == 0
    out[:, none] = True
    p_out = np.where(out, np.exp(refs), 0.0).sum(0) / out.sum(0)
    return target - np.log((1 + a) / 2 * p_out + (1 - a) / 2)


@ATTACKS.register_module()
class RMIA(ReferenceAttack):
    name = "rmia"
    order = 50
    kind = "log_prob"
    uses_population = True
    params = {
        "a": Param(float, default=0.3, low=0.0, high=1.0, help="offline approximation of Pr_IN from Pr_OUT"),
        "gamma": Param(float, default=1.0, low=0.0, low_open=True, help="likelihood-ratio margin over z"),
    }
    tunable = ("a", "gamma")

    def bank_scores(self, view: BankView) -> np.ndarray:
        a = self.values["a"]
        lx = log_likelihood_ratio(view.target, view.refs[:, view.index], view.masks[:, view.index], a)
        lz = log_likelihood_ratio(view.pop_target, view.refs[:, view.pop_index], view.masks[:, view.pop_index], a)
        above = (lx[:, None] - lz[None, :]) >= np.log(self.values["gamma"])
        valid = np.ones_like(above)
        own = np.flatnonzero(view.self_in_pop >= 0)
        valid[own, view.self_in_pop[own]] = False
        n = valid.sum(1)
        return (above & valid).sum(1) / n + expit(lx) / (2 * (n + 1))
