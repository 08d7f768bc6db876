"""The training-side defenses from the membership-inference literature do what they claim: the DMP student
reads only its reference set and never a label, the adversarial term changes the classifier's gradient by
exactly weight * d(mean h(members)), and RelaxLoss holds the training loss near its target."""

from __future__ import annotations

import pytest
import torch

from benchmark.data.adapters import get_adapter
from benchmark.defenses import build_defense
from benchmark.models.data import SegmentationDataModule
from benchmark.models.lightning_module import SegmentationModule
from benchmark.models.train import TrainConfig, select_samples
from conftest import fit_model


@pytest.fixture(scope="module")
def data(small_cityscapes):
    root, train = small_cityscapes
    # members: 6; reference (non-members for the defenses): 2; held out: the last 2
    return root, train[:6], train[6:8], train[8:]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"arch": "pspnet_tiny", "epochs": 2, "batch_size": 3, "lr": 3e-3, "image_size": (32, 64), **kw})


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    root, members, _, heldout = data
    return fit_model(_cfg(), root, members, heldout, tmp_path_factory.mktemp("teacher")).checkpoint


def _weights(result) -> dict[str, torch.Tensor]:
    return torch.load(result.checkpoint, weights_only=True)["state_dict"]


class _ScrambledReferenceLabels:
    """The cityscapes adapter, except that the reference images' label maps are replaced by noise."""

    def __init__(self, reference: list[str]) -> None:
        self.inner, self.reference = get_adapter("cityscapes"), set(reference)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_label(self, sample):
        label = self.inner.read_label(sample)
        if sample.id in self.reference:
            return (torch.randint(0, 19, label.shape, generator=torch.Generator().manual_seed(1))).numpy().astype(label.dtype)
        return label


def test_distilled_student_reads_only_the_reference_set_and_no_label(data, teacher, tmp_path):
    from benchmark.models.train import train_model

    root, members, reference, heldout = data
    student = fit_model(_cfg(), root, members, heldout, tmp_path / "a", "distillation", {"temperature": 2.0},
                        reference_ids=reference, teacher=teacher)
    assert set(student.seen_train_ids) == set(reference) and not set(student.seen_train_ids) & set(members)
    assert student.metrics["train_loss_last"] < student.metrics["train_loss_first"]  # it learns the teacher
    # the reference images' ground truth is never used: noise in its place gives the same weights
    scrambled = train_model(_cfg(), build_defense("distillation", {"temperature": 2.0}), _ScrambledReferenceLabels(reference),
                            root, members, heldout, tmp_path / "b", reference_ids=reference, teacher=teacher)
    a, b = _weights(student), _weights(scrambled)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # while the teacher's soft labels are: another temperature gives another student
    hotter = fit_model(_cfg(), root, members, heldout, tmp_path / "c", "distillation", {"temperature": 4.0},
                       reference_ids=reference, teacher=teacher)
    assert not all(torch.equal(a[k], _weights(hotter)[k]) for k in a)


def test_a_small_training_set_is_cycled_to_the_members_number_of_images(data):
    root, members, reference, _ = data
    adapter = get_adapter("cityscapes")
    module = SegmentationDataModule(adapter, select_samples(adapter, root, members, "train"), {}, batch_size=3,
                                    image_size=(32, 64), reference=select_samples(adapter, root, reference, "reference"))
    module.use_train_samples(module.reference_set.samples, per_epoch=len(members))
    ids = [i for batch in module.train_dataloader() for i in batch["id"]]
    assert sorted(ids) == sorted(reference * 3)  # 6 draws, each reference image 3 times


def _adv_module(data):
    root, members, reference, _ = data
    adapter = get_adapter("cityscapes")
    datamodule = SegmentationDataModule(adapter, select_samples(adapter, root, members, "train"), {}, batch_size=3,
                                        image_size=(32, 64), reference=select_samples(adapter, root, reference, "reference"))
    defense = build_defense("adv_reg", {"weight": 2.0, "attack_steps": 2})
    module = SegmentationModule("pspnet_tiny", defense, num_classes=19)
    defense.setup(module, datamodule, epochs=1)
    batch = next(iter(datamodule.train_dataloader()))
    return module, defense, batch["image"], batch["label"]


def _grads(module, loss: torch.Tensor) -> torch.Tensor:
    module.net.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in module.net.parameters() if p.grad is not None])


def test_adversarial_term_changes_the_gradient_by_weight_times_the_gain(data):
    torch.manual_seed(0)
    module, defense, images, labels = _adv_module(data)
    before = [p.detach().clone() for p in defense.inference.parameters()]
    torch.manual_seed(1)  # the same dropout masks in every forward below
    defended = _grads(module, defense.training_loss(module, images, labels))
    assert not all(torch.equal(a, b) for a, b in zip(before, defense.inference.parameters()))  # h took its steps
    assert defense.seen == 2 * 2 * len(images)  # 2 steps on members + as many reference images
    torch.manual_seed(1)
    plain = _grads(module, module.per_image_loss(module.outputs(images), labels).mean())
    torch.manual_seed(1)
    gain = _grads(module, torch.sigmoid(defense.inference(module.outputs(images)[0][1], labels)).mean())
    assert gain.abs().max() > 0 and not torch.allclose(defended, plain)
    assert torch.allclose(defended - plain, 2.0 * gain, atol=1e-6, rtol=1e-4)
    assert not any(p.requires_grad for p in defense.inference.parameters())


def test_relaxloss_keeps_the_training_loss_near_its_target(data, tmp_path):
    root, members, _, heldout = data
    cfg = _cfg(epochs=10, lr=1e-2)
    plain = fit_model(cfg, root, members, heldout, tmp_path / "plain")
    relaxed = fit_model(cfg, root, members, heldout, tmp_path / "relax", "relaxloss", {"alpha": 2.0})
    assert plain.metrics["train_loss_last"] < 2.0 - 0.4  # undefended, the loss falls well below the target
    assert abs(relaxed.metrics["relaxloss_ce_last_epoch"] - 2.0) < 0.15
    assert abs(relaxed.metrics["loss_train"] - 2.0) < 0.2  # the evaluated member loss too


def test_reference_forward_leaves_the_released_models_batchnorm_statistics_alone(data):
    """Issue 22 section 10: the reference images are not training data, so after a step the running statistics
    are those of the members' forward alone; a plain training-mode reference forward (the bug) moves them."""
    torch.manual_seed(0)
    module, defense, images, labels = _adv_module(data)
    start = {k: v.clone() for k, v in module.net.state_dict().items()}
    stats = lambda: {k: v.clone() for k, v in module.net.named_buffers() if "running" in k}  # noqa: E731
    assert stats(), "pspnet_tiny has BatchNorm layers"
    torch.manual_seed(1)
    defense.training_loss(module, images, labels)
    after_step = stats()
    module.net.load_state_dict(start)
    torch.manual_seed(1)
    with torch.no_grad():
        module.outputs(images)
    members_only = stats()
    assert all(torch.equal(after_step[k], members_only[k]) for k in members_only)
    ref_images, _ = defense.reference_batch(len(images), images.device)
    with torch.no_grad():
        module.outputs(ref_images)  # the bug: a training-mode forward that updates the statistics
    assert any(not torch.equal(stats()[k], members_only[k]) for k in members_only)
