"""Knowledge distillation for membership privacy (DMP: Shejwalkar and Houmansadr, AAAI 2021).

A teacher trained on the private members (the plan passes the same role's undefended model) labels a
disjoint reference set (the manifest's `<role>_reference` pool: outside every query set) with its softened
posteriors; the released student is trained on those soft labels alone. The student's loader reads the
reference images only and their ground truth is never used, so no member image or label reaches the
released weights except through what the teacher's predictions on other images carry.

Per pixel, the loss is the Hinton KL divergence T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over
every pixel of an image (the reference labels are not read, so none is ignored), then over the batch. The
student draws as many images per epoch as there are members (the reference set cycled), so it takes the
teacher's number of optimisation steps: a small reference set does not silently mean a shorter training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.defenses.base import TrainingDefense
from benchmark.errors import SegleakError
from benchmark.models.lightning_module import SegmentationNet, upsample
from benchmark.needs import REFERENCE_SET, TEACHER
from benchmark.params import Param
from benchmark.registry import DEFENSES


def load_teacher(path) -> SegmentationNet:
    """The teacher's checkpoint as a frozen, eval-mode network taking raw images (not a submodule of the
    student's module, so it is neither trained nor saved with the student)."""
    from benchmark.models.train import load_model

    model, _ = load_model(path)
    net = SegmentationNet(model).eval()
    net.requires_grad_(False)
    return net


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """`[B]` per-image mean over pixels of T^2 KL(teacher_T || student_T); student logits resized to the teacher's."""
    student = upsample(student, teacher.shape[-2:]).float()
    target = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(F.log_softmax(student / temperature, dim=1), target, log_target=True, reduction="none").sum(1)
    return kl.flatten(1).mean(1) * temperature**2


@DEFENSES.register_module()
class Distillation(TrainingDefense):
    name = "distillation"
    order = 560
    needs = frozenset({TEACHER, REFERENCE_SET})
    example = {"temperature": 2.0}
    params = {"temperature": Param(float, default=1.0, low=0.0, low_open=True,
                                   help="softmax temperature of the teacher's soft labels and the student")}

    def setup(self, module, data, epochs: int) -> None:
        if data.teacher is None or not len(data.reference_set):
            raise SegleakError("defense 'distillation' needs a teacher checkpoint and a reference set")
        self.teacher = load_teacher(data.teacher)
        n_members = len(data.train_set)
        self.n_reference = len(data.reference_set)
        data.use_train_samples(data.reference_set.samples, per_epoch=n_members)

    def training_loss(self, module, images: Tensor, labels: Tensor) -> Tensor:
        temperature = self.values["temperature"]
        self.teacher.to(images.device)
        with torch.no_grad():
            soft = self.teacher(images)[0]
        # labels (the reference images' ground truth) are deliberately unused: DMP trains on soft labels only
        return sum(w * distillation_loss(logits, soft, temperature) for w, logits in module.outputs(images)).mean()

    def summary(self, module) -> dict[str, float]:
        return {"distillation_reference_images": float(self.n_reference)}
