"""Label smoothing: cross-entropy against (1 - eps) one-hot + eps / C, so members are fitted less sharply."""

from torch import Tensor

from benchmark.defenses.base import TrainingDefense
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class LabelSmoothing(TrainingDefense):
    name = "label_smoothing"
    order = 520
    example = {"eps": 0.1}
    params = {"eps": Param(float, low=0.0, high=1.0, low_open=True, high_open=True, help="smoothing mass")}

    def training_loss(self, module, images: Tensor, labels: Tensor) -> Tensor:
        return module.per_image_loss(module.outputs(images), labels, label_smoothing=self.values["eps"]).mean()
