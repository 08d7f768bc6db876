"""Mix-up: images mixed with a shuffled copy of the batch, lam ~ Beta(alpha, alpha); the per-image
cross-entropy against either label map is mixed with the same lam."""

import torch
from torch import Tensor

from benchmark.defenses.base import TrainingDefense
from benchmark.params import Param
from benchmark.registry import DEFENSES


@DEFENSES.register_module()
class Mixup(TrainingDefense):
    name = "mixup"
    order = 530
    example = {"alpha": 0.4}
    params = {"alpha": Param(float, low=0.0, low_open=True, help="Beta(alpha, alpha) mixing distribution")}

    def training_loss(self, module, images: Tensor, labels: Tensor) -> Tensor:
        if images.shape[0] < 2:
            return super().training_loss(module, images, labels)
        alpha = self.values["alpha"]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        partner = torch.randperm(images.shape[0], device=images.device)
        outputs = module.outputs(lam * images + (1 - lam) * images[partner])
        loss = lam * module.per_image_loss(outputs, labels) + (1 - lam) * module.per_image_loss(outputs, labels[partner])
        return loss.mean()
