"""Top-k: release only the k largest posteriors per pixel, renormalised; k = 1 is a label-only release."""

from torch import Tensor

from benchmark.defenses.base import OutputDefense
from benchmark.defenses.output import log_topk
from benchmark.errors import SegleakError
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class TopK(OutputDefense):
    name = "topk"
    order = 140
    example = {"k": 3}
    params = {"k": Param(int, low=1, help="how many classes per pixel keep their posterior")}

    @property
    def label_only(self) -> bool:
        # one class kept and renormalised is the one-hot argmax map: attacks must treat it as such
        return self.values["k"] == 1

    def check_classes(self, num_classes: int) -> None:
        if self.values["k"] > num_classes:
            raise SegleakError(f"defense 'topk': k={self.values['k']} is more than the {num_classes} classes")

    def apply(self, log_probs: Tensor, generator=None) -> Tensor:
        self.check_classes(log_probs.shape[1])
        return log_topk(log_probs, self.values["k"])
