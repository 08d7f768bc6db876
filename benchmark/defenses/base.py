"""What a defense is: a registered class declaring its parameters, its side and how the report shows it.

Output defenses transform what the victim releases (log-posteriors, see `benchmark.models.release`);
training defenses change how a model is trained through hooks that the Lightning module and the data
module call, so a new defense never adds a field to a shared recipe or a branch to the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from benchmark.params import Param, check_params

if TYPE_CHECKING:
    from benchmark.models.data import SegmentationDataModule
    from benchmark.models.lightning_module import SegmentationModule

# log(1e-30): the floor of every released log-probability, as the authors' code clips probabilities at
# 1e-30 before the log (so a one-hot release's wrong pixels read -log p = 69.08 in the structured loss)
LOG_FLOOR = math.log(1e-30)


@dataclass(frozen=True)
class Trend:
    """A report figure of leakage against a defense's strength: its x is one of the defense's parameters
    (`param`) or a column of the report's table (`column`, e.g. the accountant's epsilon)."""

    stem: str  # the figure's file name
    what: str  # "Attack AUC against <what>"
    axis: str  # the x-axis label
    scale: str = "linear"
    param: str | None = None
    column: str | None = None


class Defense:
    """A defense with validated parameter values; subclasses declare `name`, `params` and their side."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when its models or releases would change: they are recomputed
    side: ClassVar[str]  # "output" or "training"
    params: ClassVar[dict[str, Param]] = {}
    random: ClassVar[bool] = False  # draws noise: applied with a seeded generator
    order: ClassVar[int] = 1000  # position in the report's columns (output defenses first)
    needs: ClassVar[frozenset[str]] = frozenset()  # extra training inputs (benchmark.needs.TRAINING_NEEDS)
    example: ClassVar[dict[str, Any]] = {}  # valid parameters, for the docs and the contract tests
    trend: ClassVar[Trend | None] = None  # the report plots leakage against its strength
    gpu_phase: ClassVar[str | None] = None  # the gpu-check phase its training runs at (None: the plain one)

    def __init__(self, **values: Any) -> None:
        self.values = check_params(f"defense {self.name!r}", self.params, values)
        self.validate()

    def validate(self) -> None:
        """Rules across parameters (raise SegleakError); single-parameter rules live in `params`."""

    def check_classes(self, num_classes: int) -> None:
        """Rules that depend on the dataset's class count (raise SegleakError)."""

    @property
    def label_only(self) -> bool:
        """Releases the top-1 label alone (attacks that need confidences refuse such cells)."""
        return False

    @property
    def output_side(self) -> bool:
        return self.side == "output"

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.values.items())
        return f"{self.name}({inner})" if inner else self.name


class OutputDefense(Defense):
    """Changes what is released: log-posteriors `[B,C,H,W]` in, log-posteriors out (>= LOG_FLOOR)."""

    side = "output"
    order = 100

    def apply(self, log_probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


class TrainingDefense(Defense):
    """Changes how a model is trained. Every hook has a do-nothing default, so a defense overrides only
    what it changes: the epoch budget, the weight decay, the norm layers, the set-up of model and data
    before training, and the loss of a training batch."""

    side = "training"
    order = 500
    norm: ClassVar[str] = "BN"
    # each image's gradient is clipped alone and no layer mixes images (DP-SGD): an image without a labelled
    # pixel then changes nothing, so an audit can keep the training set's size public with inert placeholders
    per_image_clipping: ClassVar[bool] = False

    def epochs(self, epochs: int) -> int:
        return epochs

    def weight_decay(self, value: float) -> float:
        return value

    def setup(self, module: SegmentationModule, data: SegmentationDataModule, epochs: int) -> None:
        """Called once before training (wrap the model for DP, build an auxiliary network, load a teacher)."""

    def training_loss(self, module: SegmentationModule, images: Tensor, labels: Tensor) -> Tensor:
        """The scalar loss of one training batch; by default the mean per-image cross-entropy."""
        return module.per_image_loss(module.outputs(images), labels).mean()

    def summary(self, module: SegmentationModule) -> dict[str, float]:
        """Figures to record with the trained model (DP epsilon, ...)."""
        return {}
