"""RelaxLoss (Chen, Yu and Fritz, ICLR 2022): keep the mean training loss near a target level `alpha` instead
of driving it to zero, so members are not fitted much more tightly than non-members.

As in the authors' released code, on the batch's mean loss L (the per-image cross-entropy, averaged):
- even epochs: minimise |L - alpha| (gradient descent above alpha, gradient ascent below it);
- odd epochs: above alpha, plain descent on L; below it, posterior flattening: per pixel, a soft label that
  keeps the model's own (detached, capped at `upper`) probability of the true class and spreads the rest
  evenly over the other classes; misclassified pixels are pulled towards it, and every pixel's
  cross-entropy is ascended (loss = (1 - correct) * CE(soft label) - CE(true label)).
Pixels are averaged per image over the labelled ones, then over the batch, as for the plain loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.defenses.base import TrainingDefense
from benchmark.models.lightning_module import upsample
from benchmark.params import Param
from benchmark.registry import DEFENSES


def flattening_loss(logits: Tensor, labels: Tensor, upper: float, ignore_index: int) -> Tensor:
    """`[B]` per-image mean over labelled pixels of (1 - correct) * CE(flattened soft label) - CE(label)."""
    log_p = F.log_softmax(upsample(logits, labels.shape[-2:]).float(), dim=1)
    num_classes = log_p.shape[1]
    valid = labels != ignore_index
    target = labels.where(valid, 0)
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    ce = -(log_p * onehot).sum(1)
    with torch.no_grad():
        p_true = ce.neg().exp().clamp(max=upper)
        soft = onehot * p_true.unsqueeze(1) + (1 - onehot) * ((1 - p_true) / (num_classes - 1)).unsqueeze(1)
        wrong = (log_p.argmax(1) != target).float()
    soft_ce = -(log_p * soft).sum(1)
    pixel = (wrong * soft_ce - ce) * valid
    return pixel.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)


@DEFENSES.register_module()
class RelaxLoss(TrainingDefense):
    name = "relaxloss"
    order = 580
    example = {"alpha": 3.0}
    params = {
        "alpha": Param(float, low=0.0, low_open=True, help="target level of the mean training loss"),
        "upper": Param(float, default=1.0, low=0.0, high=1.0, low_open=True,
                       help="cap on the true class's probability in the flattened soft labels"),
    }

    def setup(self, module, data, epochs: int) -> None:
        self.epoch_ce: dict[int, list[float]] = {}

    def training_loss(self, module, images: Tensor, labels: Tensor) -> Tensor:
        alpha = self.values["alpha"]
        outputs = module.outputs(images)
        loss = module.per_image_loss(outputs, labels).mean()
        self.epoch_ce.setdefault(module.current_epoch, []).append(loss.item())
        if module.current_epoch % 2 == 0:
            return (loss - alpha).abs()
        if loss.item() > alpha:
            return loss
        ignore = module.hparams.ignore_index
        return sum(w * flattening_loss(logits, labels, self.values["upper"], ignore) for w, logits in outputs).mean()

    def summary(self, module) -> dict[str, float]:
        """The mean cross-entropy of the last epoch's batches (the loss RelaxLoss holds near alpha)."""
        last = self.epoch_ce[max(self.epoch_ce)] if self.epoch_ce else []
        return {"relaxloss_ce_last_epoch": sum(last) / len(last) if last else float("nan")}
