"""DP-SGD with Opacus: per-image gradients clipped to `max_grad_norm`, Gaussian noise, Poisson sampling and
the RDP accountant (benchmark.models.dp has what each architecture needs: GroupNorm, the grad-sample mode).

`delta` defaults to min(1e-5, 1 / (10 n)) for n training images: a delta near 1/n would allow a mechanism
that publishes one training image outright. `noise_multiplier: 0` trains with clipping and Poisson sampling
but no noise (epsilon = inf): the GroupNorm, clipped baseline that separates what the noise costs from what
the architecture change costs.

`grad_sample_mode` "ghost" (Opacus' fast gradient clipping, the default) and "ew" (per-sample gradients
materialised) take the same step (tests/test_dp_ghost.py); ghost needs a fraction of ew's memory and trains under
bf16 autocast. `max_physical_batch_size` splits each Poisson batch into physical batches (the same step, less
memory). Version 2: ghost became the default (and the models' floating-point sums changed with it).
"""

from __future__ import annotations

import math

from benchmark.defenses.base import TrainingDefense, Trend
from benchmark.errors import SegleakError
from benchmark.models import dp
from benchmark.params import Param
from benchmark.registry import DEFENSES

DELTA_CAP = 1e-5


def default_delta(n_train: int) -> float:
    return min(DELTA_CAP, 1.0 / (10 * n_train))


@DEFENSES.register_module()
class DPSGD(TrainingDefense):
    name = "dp_sgd"
    version = 2
    order = 510
    norm = "GN"  # Opacus cannot take per-image gradients through BatchNorm, which mixes images
    per_image_clipping = True
    gpu_phase = "dp"
    trend = Trend("auc_vs_dp_epsilon", "the DP-SGD privacy budget", "DP-SGD privacy budget ε (log scale; mean over seeds)",
                  scale="log", column="dp_epsilon_mean")
    example = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    params = {
        "max_grad_norm": Param(float, low=0.0, low_open=True, help="per-image gradient clipping norm"),
        "noise_multiplier": Param(float, default=None, nullable=True, low=0.0, help="noise std / clipping norm"),
        "target_epsilon": Param(float, default=None, nullable=True, low=0.0, low_open=True,
                                help="calibrate the noise to this epsilon at delta"),
        "delta": Param(float, default=None, nullable=True, low=0.0, high=1.0, low_open=True, high_open=True,
                       help="default min(1e-5, 1/(10 n))"),
        # left out of the values (and the label) when not given: the mode changes the cost, not the mechanism
        "grad_sample_mode": Param(str, default=None, nullable=True, choices=dp.MODES,
                                  help="ghost (default): fast gradient clipping; ew: per-sample gradients materialised"),
        "max_physical_batch_size": Param(int, default=None, nullable=True, low=1,
                                         help="split each Poisson batch into physical batches of at most this size"),
    }

    def validate(self) -> None:
        if ("noise_multiplier" in self.values) == ("target_epsilon" in self.values):
            raise SegleakError("defense 'dp_sgd' needs exactly one of noise_multiplier or target_epsilon, "
                               f"got {sorted(self.values)}")

    @property
    def mode(self) -> str:
        """How the per-image norms are taken (`benchmark.models.dp.MODES`): the same mechanism either way."""
        return self.values.get("grad_sample_mode") or dp.MODES[0]

    def setup(self, module, data, epochs: int) -> None:
        dp.prepare_for_dp(module.net)
        n = len(data.train_set)
        self.private = dp.make_private(
            module.net, module.build_optimizer(), data.tuple_loader(), max_grad_norm=self.values["max_grad_norm"],
            delta=self.values.get("delta") or default_delta(n), epochs=epochs,
            noise_multiplier=self.values.get("noise_multiplier"), target_epsilon=self.values.get("target_epsilon"),
            mode=self.mode, max_physical_batch_size=self.values.get("max_physical_batch_size"),
        )
        module.use_private(self.private.net, self.private.optimizer, steps=epochs * len(self.private.poisson_loader))
        data.use_train_loader(self.private.loader)

    def training_loss(self, module, images, labels):
        """The per-image loss through `PrivateTraining.loss`: the ghost mode's two-pass backward needs each image's."""
        return self.private.loss(module.per_image_loss(module.outputs(images), labels))

    def summary(self, module) -> dict[str, float]:
        epsilon = self.private.epsilon()
        out = {"dp_noise_multiplier": self.private.noise_multiplier, "dp_delta": self.private.delta,
               "dp_sample_rate": float(self.private.poisson_loader.sample_rate)}
        if math.isfinite(epsilon):
            out["dp_epsilon"] = epsilon
        return out
