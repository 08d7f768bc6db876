"""Gaussian noise on every released posterior value (the paper's noise defense)."""

from torch import Tensor

from benchmark.defenses.base import OutputDefense, Trend
from benchmark.defenses.output import gaussian, to_log
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class Gaussian(OutputDefense):
    """p + N(0, sigma^2), clamped at 1e-6 and renormalised; a fresh seeded draw per release."""

    name = "gaussian"
    order = 120
    random = True
    example = {"sigma": 0.1}
    trend = Trend("auc_vs_gaussian_sigma", "the Gaussian output noise",
                  "Gaussian noise σ (std of the noise added to each posterior value)", param="sigma")
    params = {"sigma": Param(float, low=0.0, help="standard deviation of the noise on each posterior value")}

    def apply(self, log_probs: Tensor, generator=None) -> Tensor:
        return to_log(gaussian(log_probs.exp(), self.values["sigma"], generator=generator))
