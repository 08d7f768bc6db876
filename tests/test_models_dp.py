"""DP-SGD with Opacus: every tiny architecture trains privately, per-sample gradients are right, and the
accountant's epsilon behaves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleExpandedWeights

from benchmark.models.builder import build_segmentor, list_architectures
from benchmark.models.dp import opacus_mode, prepare_for_dp
from benchmark.models.lightning_module import SegmentationNet
from benchmark.models.train import TrainConfig, load_model
from conftest import fit_model

TINY = [arch for arch in list_architectures() if arch.endswith("_tiny")]


@pytest.fixture(scope="module")
def data(small_cityscapes):
    root, train = small_cityscapes
    return root, train[:8], train[8:]


def _dp_train(data, out, arch="pspnet_tiny", epochs=2, batch_size=4, optimizer="adamw", **dp):
    root, members, heldout = data
    cfg = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=1e-3, image_size=(32, 64), optimizer=optimizer)
    return fit_model(cfg, root, members, heldout, out, "dp_sgd", {"max_grad_norm": 1.0, **(dp or {"noise_multiplier": 1.0})})


@pytest.mark.parametrize("arch", TINY)
def test_every_tiny_architecture_trains_under_dp(arch, data, tmp_path):
    root, members, heldout = data
    result = _dp_train(data, tmp_path, arch)
    m = result.metrics
    assert math.isfinite(m["dp_epsilon"]) and m["dp_epsilon"] > 0
    assert m["dp_delta"] == pytest.approx(min(1e-5, 1 / (10 * len(members))))
    assert set(result.seen_train_ids) <= set(members)
    assert torch.load(result.checkpoint, weights_only=True)["norm"] == "GN"
    model, meta = load_model(result.checkpoint)  # SegFormer's DP attention layers must load back
    assert meta["dp"] is True
    assert model(torch.rand(1, 3, 32, 64) * 255, mode="tensor").isfinite().all()


def test_epsilon_shrinks_when_the_noise_grows(data, tmp_path):
    eps = [_dp_train(data, tmp_path / str(s), noise_multiplier=s).metrics["dp_epsilon"] for s in (0.7, 2.0)]
    assert all(math.isfinite(e) for e in eps)
    assert eps[1] < eps[0]


def test_target_epsilon_is_met(data, tmp_path):
    m = _dp_train(data, tmp_path, target_epsilon=5.0, delta=1e-3).metrics
    assert m["dp_delta"] == 1e-3
    assert m["dp_noise_multiplier"] > 0
    assert 0 < m["dp_epsilon"] <= 5.0 * 1.05


def test_poisson_sampling_survives_empty_batches(data, tmp_path):
    # expected batch 1 of 8: about a third of the Poisson batches are empty and must take a noise-only step
    root, members, heldout = data
    result = _dp_train(data, tmp_path, batch_size=1, epochs=2)
    assert math.isfinite(result.metrics["dp_epsilon"])
    assert set(result.seen_train_ids) <= set(members)


def test_accountant_steps_and_sample_rate_match_epochs_and_loader(data, tmp_path, monkeypatch):
    """The RDP accountant is charged one step per Poisson batch of every epoch, at sample rate 1 / (the number
    of batches of the plain loader): what the epsilon rests on."""
    from benchmark.defenses.components import dp_sgd

    seen = {}
    real = dp_sgd.DPSGD.summary

    def record(self, module):
        seen["history"] = list(self.private.engine.accountant.history)
        seen["loader"] = len(self.private.poisson_loader)
        return real(self, module)

    monkeypatch.setattr(dp_sgd.DPSGD, "summary", record)
    root, members, heldout = data
    m = _dp_train(data, tmp_path, batch_size=3, epochs=3).metrics
    (noise, rate, steps), = seen["history"]
    assert noise == pytest.approx(1.0) and rate == pytest.approx(1 / math.ceil(len(members) / 3))
    assert steps == 3 * seen["loader"] and m["dp_sample_rate"] == pytest.approx(rate)


def test_no_noise_means_no_epsilon(data, tmp_path):
    """noise_multiplier 0 (clipping and GroupNorm, no noise): the baseline that separates the noise's cost from
    the architecture change's; it has no DP guarantee, so no epsilon is reported."""
    m = _dp_train(data, tmp_path, noise_multiplier=0.0).metrics
    assert "dp_epsilon" not in m and m["dp_noise_multiplier"] == 0


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
    if opacus_mode(net, "ew") == "hooks":
        wrapped = GradSampleModule(net, loss_reduction="sum")
    else:
        wrapped = GradSampleModuleExpandedWeights(net, loss_reduction="sum")
    net.zero_grad()
    loss_of(wrapped(images), labels).backward()
    for name, p in net.named_parameters():
        assert p.grad_sample is not None, name
        for i in range(2):
            torch.testing.assert_close(p.grad_sample[i], expected[i][name], rtol=1e-3, atol=1e-5, msg=name)


def _weights(result) -> dict[str, torch.Tensor]:
    return torch.load(result.checkpoint, weights_only=True)["state_dict"]


def test_virtual_batches_train_the_same_model(data, tmp_path):
    """Physical batches of at most 2 out of Poisson batches of about 4: the same clipped sums, noise draws, learning
    rates and accountant steps, so the same weights as the un-split training. (The un-split run goes through the
    same splitting loader with a limit no batch reaches: from the plain Poisson loader the same seed draws other
    batches.)"""
    whole = _dp_train(data, tmp_path / "whole", optimizer="sgd", noise_multiplier=1.0, max_physical_batch_size=100)
    split = _dp_train(data, tmp_path / "split", optimizer="sgd", noise_multiplier=1.0, max_physical_batch_size=2)
    assert split.metrics["dp_epsilon"] == whole.metrics["dp_epsilon"]
    a, b = _weights(whole), _weights(split)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def test_ghost_and_ew_train_alike_and_spend_the_same_privacy(data, tmp_path):
    """The mode changes the cost, not the mechanism: the same epsilon, sample rate and (to float rounding over the
    steps) the same weights, so a one-run audit of their released outputs reads the same bound."""
    runs = {mode: _dp_train(data, tmp_path / mode, optimizer="sgd", noise_multiplier=1.0, grad_sample_mode=mode)
            for mode in ("ghost", "ew")}
    for key in ("dp_epsilon", "dp_sample_rate", "dp_noise_multiplier", "dp_delta"):
        assert runs["ghost"].metrics[key] == runs["ew"].metrics[key], key
    a, b = _weights(runs["ew"]), _weights(runs["ghost"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)
    # the one-run audit reads the released outputs: the same scores, the same bound (members as the "included")
    from benchmark.audit.bound import audit_bound
    from benchmark.audit.scores import canary_scores
    from benchmark.data.adapters import get_adapter
    from benchmark.models.release import release_outputs

    root, members, heldout = data
    ids = members + heldout
    included = np.array([i in members for i in ids])
    audits = {}
    for mode, run in runs.items():
        released = release_outputs(run.checkpoint, get_adapter("cityscapes"), root, ids, image_size=(32, 64))
        scores = canary_scores(["loss"], released, None, ids)
        audits[mode] = (scores["loss"], audit_bound(scores, included, delta=runs[mode].metrics["dp_delta"]))
    np.testing.assert_allclose(audits["ghost"][0], audits["ew"][0], rtol=1e-3)
    assert audits["ghost"][1] == audits["ew"][1]


@pytest.mark.parametrize("mode, precision", [("ghost", "bf16-mixed"), ("ew", "32-true")])
def test_ghost_trains_under_bf16_autocast_and_ew_in_fp32(mode, precision, data, tmp_path, monkeypatch):
    """CPU autocast stands in for the GPU's: the ghost mode keeps the configured bf16, ew falls back to fp32."""
    from benchmark.models import train

    used = []

    class Recording(train.pl.Trainer):
        def __init__(self, *args, **kwargs):
            used.append(kwargs["precision"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train.pl, "Trainer", Recording)
    root, members, heldout = data
    cfg = TrainConfig(arch="pspnet_tiny", epochs=1, batch_size=4, lr=1e-3, image_size=(32, 64), precision="bf16-mixed")
    result = fit_model(cfg, root, members, heldout, tmp_path, "dp_sgd",
                       {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "grad_sample_mode": mode})
    assert used == [precision] and math.isfinite(result.metrics["train_loss_last"])
