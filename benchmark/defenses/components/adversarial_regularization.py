"""Adversarial regularisation (Nasr, Shokri and Houmansadr, CCS 2018): min-max training against an inference
model that tells the members from a reference set of non-members.

Each training batch alternates the two players, as in Nasr et al.'s Algorithm 1:
1. the inference model h takes `attack_steps` steps on binary cross-entropy, members (this batch's posteriors,
   detached) against as many reference images (the manifest's `<role>_reference` pool, outside every query
   set), both forwarded in training mode so that h separates membership and not the norm layers' mode; the
   reference forward runs on copies of the network's buffers, so BatchNorm's running statistics of the
   released model are those of its members only (the reference images are not its training data);
2. the classifier minimises CE + weight * (mean h(members) - 0.5), the gain term of the authors' released
   code (the probability h gives its members, not its log: bounded, so the classifier cannot win by
   pushing h's logits to minus infinity).

For segmentation, h reads maps at the decode head's resolution: per pixel the posterior, the one-hot ground
truth and the pixel loss -log p_y (zero at ignored pixels), through two strided convolutions pooled over the
image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.defenses.base import TrainingDefense
from benchmark.models.release import downsample_labels
from benchmark.needs import REFERENCE_SET
from benchmark.params import Param
from benchmark.registry import DEFENSES


class InferenceNet(nn.Module):
    """h(logits, labels) -> `[B]` member logits: a small CNN over posterior, one-hot label and pixel-loss maps."""

    def __init__(self, num_classes: int, ignore_index: int, width: int = 16) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.body = nn.Sequential(
            nn.Conv2d(2 * num_classes + 1, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(width, 1)

    def features(self, logits: Tensor, labels: Tensor) -> Tensor:
        """`[B, 2C+1, h, w]` at the logits' resolution (labels sampled at each cell's centre, as a release does):
        posterior, one-hot label, -log p_y; zero where ignored. Full resolution would cost h more than the
        segmentor's own step."""
        if labels.shape[-2:] != logits.shape[-2:]:
            labels = downsample_labels(labels, tuple(logits.shape[-2:])).long()
        log_p = F.log_softmax(logits.float(), dim=1)
        valid = (labels != self.ignore_index).unsqueeze(1)
        onehot = F.one_hot(labels.where(valid.squeeze(1), 0), self.num_classes).permute(0, 3, 1, 2) * valid
        pixel_loss = -(log_p * onehot).sum(1, keepdim=True)
        return torch.cat([log_p.exp() * valid, onehot.float(), pixel_loss], dim=1)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.head(self.body(self.features(logits, labels)).mean(dim=(2, 3))).squeeze(1)


@contextmanager
def frozen_buffers(net: nn.Module) -> Iterator[None]:
    """Run a training-mode forward (batch statistics) without touching `net`'s buffers (BatchNorm running
    means, variances and counts): the forward updates copies, and the originals are put back on exit. Not an
    in-place restore: the members' forward may have saved these very tensors for its backward."""
    saved = [(m, name, b) for m in net.modules() for name, b in m._buffers.items() if b is not None]
    for m, name, b in saved:
        m._buffers[name] = b.clone()
    try:
        yield
    finally:
        for m, name, b in saved:
            m._buffers[name] = b


@DEFENSES.register_module()
class AdversarialRegularization(TrainingDefense):
    name = "adv_reg"
    version = 2  # the reference forward no longer updates the released model's BatchNorm statistics
    order = 570
    needs = frozenset({REFERENCE_SET})
    example = {"weight": 1.0}
    params = {
        "weight": Param(float, low=0.0, low_open=True, help="lambda: weight of the inference model's gain"),
        "attack_steps": Param(int, default=1, low=1, high=20, help="inference-model steps per classifier step (k)"),
        "attack_lr": Param(float, default=1e-3, low=0.0, low_open=True, help="the inference model's Adam rate"),
    }

    def setup(self, module, data, epochs: int) -> None:
        hp = module.hparams
        self.inference = InferenceNet(hp.num_classes, hp.ignore_index)
        self.optimizer = torch.optim.Adam(self.inference.parameters(), lr=self.values["attack_lr"])
        self.references: Iterator[dict] = data.reference_batches()
        self.correct, self.seen = 0, 0

    def reference_batch(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """`n` reference images and labels (as many as members in the batch: balanced, and never a lone image)."""
        images, labels = [], []
        while sum(len(x) for x in images) < n:
            batch = next(self.references)
            images.append(batch["image"])
            labels.append(batch["label"])
        return torch.cat(images)[:n].to(device), torch.cat(labels)[:n].to(device)

    def attack_step(self, member_logits: Tensor, labels: Tensor, ref_logits: Tensor, ref_labels: Tensor) -> None:
        """One step of h: members (1) against reference images (0); the classifier is not updated."""
        logits = torch.cat([member_logits.detach(), ref_logits.detach()])
        target = torch.cat([torch.ones(len(member_logits)), torch.zeros(len(ref_logits))]).to(logits.device)
        self.inference.requires_grad_(True)
        self.optimizer.zero_grad()
        scores = self.inference(logits, torch.cat([labels, ref_labels]))
        F.binary_cross_entropy_with_logits(scores, target).backward()
        self.optimizer.step()
        self.correct += int(((scores > 0) == (target > 0.5)).sum())
        self.seen += len(target)

    def training_loss(self, module, images: Tensor, labels: Tensor) -> Tensor:
        self.inference.to(images.device)
        outputs = module.outputs(images)
        ref_images, ref_labels = self.reference_batch(images.shape[0], images.device)
        with torch.no_grad(), frozen_buffers(module.net):  # training mode, like the members' forward
            ref_logits = module.outputs(ref_images)[0][1]
        for _ in range(self.values["attack_steps"]):
            self.attack_step(outputs[0][1], labels, ref_logits, ref_labels)
        self.inference.requires_grad_(False)  # the classifier's step must not move h
        gain = torch.sigmoid(self.inference(outputs[0][1], labels)).mean()
        return module.per_image_loss(outputs, labels).mean() + self.values["weight"] * (gain - 0.5)

    def summary(self, module) -> dict[str, float]:
        """How well the inference model told members from reference images during its training steps."""
        return {"adv_reg_inference_accuracy": self.correct / self.seen if self.seen else float("nan")}
