"""DP-SGD with Opacus: every tiny architecture trains privately, per-sample gradients are right, and the
accountant's epsilon behaves."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleExpandedWeights

from benchmark.models.builder import build_segmentor, list_architectures
from benchmark.models.dp import grad_sample_mode, prepare_for_dp
from benchmark.models.lightning_module import SegmentationNet
from benchmark.models.train import TrainConfig, load_model, train_model

TINY = [arch for arch in list_architectures() if arch.endswith("_tiny")]


@pytest.fixture(scope="module")
def data(small_cityscapes):
    root, train = small_cityscapes
    return root, train[:8], train[8:]


def _dp_cfg(arch="pspnet_tiny", epochs=2, batch_size=4, **dp) -> TrainConfig:
    params = {"max_grad_norm": 1.0, **(dp or {"noise_multiplier": 1.0})}
    return TrainConfig(
        arch=arch, epochs=epochs, batch_size=batch_size, lr=1e-3, image_size=(32, 64), defense="dp_sgd",
        defense_params=params,
    )


@pytest.mark.parametrize("arch", TINY)
def test_every_tiny_architecture_trains_under_dp(arch, data, tmp_path):
    root, members, heldout = data
    result = train_model(_dp_cfg(arch), "cityscapes", root, members, heldout, tmp_path)
    m = result.metrics
    assert math.isfinite(m["dp_epsilon"]) and m["dp_epsilon"] > 0
    assert m["dp_delta"] == pytest.approx(1 / len(members))
    assert set(result.seen_train_ids) <= set(members)
    assert torch.load(result.checkpoint, weights_only=True)["norm"] == "GN"
    model, meta = load_model(result.checkpoint)  # SegFormer's DP attention layers must load back
    assert meta["dp"] is True
    assert model(torch.rand(1, 3, 32, 64) * 255, mode="tensor").isfinite().all()


def test_epsilon_shrinks_when_the_noise_grows(data, tmp_path):
    root, members, heldout = data
    eps = [
        train_model(_dp_cfg(noise_multiplier=s), "cityscapes", root, members, heldout, tmp_path / str(s)).metrics[
            "dp_epsilon"
        ]
        for s in (0.7, 2.0)
    ]
    assert all(math.isfinite(e) for e in eps)
    assert eps[1] < eps[0]


def test_target_epsilon_is_met(data, tmp_path):
    root, members, heldout = data
    m = train_model(_dp_cfg(target_epsilon=5.0, delta=1e-3), "cityscapes", root, members, heldout, tmp_path).metrics
    assert m["dp_delta"] == 1e-3
    assert m["dp_noise_multiplier"] > 0
    assert 0 < m["dp_epsilon"] <= 5.0 * 1.05


def test_poisson_sampling_survives_empty_batches(data, tmp_path):
    # expected batch 1 of 8: about a third of the Poisson batches are empty and must take a noise-only step
    root, members, heldout = data
    result = train_model(_dp_cfg(batch_size=1, epochs=2), "cityscapes", root, members, heldout, tmp_path)
    assert math.isfinite(result.metrics["dp_epsilon"])
    assert set(result.seen_train_ids) <= set(members)


@pytest.mark.parametrize("arch", TINY)
def test_per_sample_gradients_match_single_image_gradients(arch):
    """Opacus must take the image axis as the batch axis (the SegFormer attention fix) and see every layer."""
    torch.manual_seed(0)
    net = SegmentationNet(build_segmentor(arch, norm="GN"))
    prepare_for_dp(net)
    net.train()
    images = torch.rand(2, 3, 32, 64) * 255
    labels = torch.randint(0, 19, (2, 32, 64))

    def loss_of(out, y):
        return F.cross_entropy(F.interpolate(out[0], size=y.shape[-2:], mode="bilinear"), y, reduction="sum")

    expected = []
    for i in range(2):
        net.zero_grad()
        loss_of(net(images[i : i + 1]), labels[i : i + 1]).backward()
        expected.append({n: p.grad.clone() for n, p in net.named_parameters()})
    if grad_sample_mode(net) == "hooks":
        wrapped = GradSampleModule(net, loss_reduction="sum")
    else:
        wrapped = GradSampleModuleExpandedWeights(net, loss_reduction="sum")
    net.zero_grad()
    loss_of(wrapped(images), labels).backward()
    for name, p in net.named_parameters():
        assert p.grad_sample is not None, name
        for i in range(2):
            torch.testing.assert_close(p.grad_sample[i], expected[i][name], rtol=1e-3, atol=1e-5, msg=name)
