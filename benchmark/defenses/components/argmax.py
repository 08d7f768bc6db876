"""Argmax: release only the top-1 label map (the paper's label-only defense)."""

from torch import Tensor

from benchmark.defenses.base import OutputDefense
from benchmark.defenses.output import log_one_hot
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class Argmax(OutputDefense):
    """One-hot top-1 maps: the victim's mIoU is unchanged, every confidence is hidden."""

    name = "argmax"
    order = 110

    @property
    def label_only(self) -> bool:
        return True

    def apply(self, log_probs: Tensor, generator=None) -> Tensor:
        return log_one_hot(log_probs.argmax(dim=1), log_probs.shape[1], log_probs.dtype)
