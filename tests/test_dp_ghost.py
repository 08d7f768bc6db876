"""Fast gradient clipping ("ghost") is the same DP-SGD step as "ew": per architecture, the clipped summed gradient
equals ew's and that of single-image gradients clipped one by one, with and without clipping active, and the noise
is one draw of the same scale. The mixed norm samplers are checked against per-sample gradients on both routes."""

from __future__ import annotations

import pytest
import torch
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.linear import compute_linear_grad_sample
from opacus.utils.batch_memory_manager import BatchSplittingSampler
from torch import nn

from benchmark.defenses import build_defense
from benchmark.models import dp, norm_samplers
from benchmark.models.builder import list_architectures
from benchmark.models.lightning_module import SegmentationModule

TINY = [arch for arch in list_architectures() if arch.endswith("_tiny")]
BATCH, HW = 2, (32, 64)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, 3, *HW, generator=g) * 255, torch.randint(0, 19, (BATCH, *HW), generator=g)


def _module(arch: str) -> SegmentationModule:
    torch.manual_seed(0)  # the same initial weights for every mode
    module = SegmentationModule(arch, build_defense("dp_sgd", {"noise_multiplier": 1.0, "max_grad_norm": 1.0}),
                                num_classes=19, eval_names=())
    dp.prepare_for_dp(module.net)
    module.net.train()
    return module


def _private_grads(arch: str, mode: str, clip: float, noise: float = 0.0, **kw) -> dict[str, torch.Tensor]:
    """p.grad after the DP optimiser's pre-step (clip, sum, noise, / expected batch) on one batch, by name."""
    module = _module(arch)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(BATCH)), batch_size=BATCH)
    private = dp.make_private(module.net, module.build_optimizer(), loader, max_grad_norm=clip, delta=1e-5, epochs=1,
                              noise_multiplier=noise, mode=mode, **kw)
    private.optimizer.generator = torch.Generator().manual_seed(7)
    module.use_private(private.net, private.optimizer)
    images, labels = _batch()
    private.optimizer.zero_grad()
    private.loss(module.per_image_loss(module.outputs(images), labels)).backward()
    assert private.optimizer.pre_step()
    return {n: p.grad.clone() for n, p in module.plain_net.named_parameters()}


def _single_image_grads(arch: str) -> list[dict[str, torch.Tensor]]:
    module = _module(arch)
    images, labels = _batch()
    out = []
    for i in range(BATCH):
        module.net.zero_grad()
        module.per_image_loss(module.outputs(images[i : i + 1]), labels[i : i + 1]).sum().backward()
        out.append({n: p.grad.clone() for n, p in module.net.named_parameters()})
    return out


def _clipped_mean(singles: list[dict[str, torch.Tensor]], clip: float) -> dict[str, torch.Tensor]:
    norms = torch.stack([torch.cat([g.flatten() for g in s.values()]).norm() for s in singles])
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus' clipping factor
    return {n: sum(f * s[n] for f, s in zip(factors, singles)) / BATCH for n in singles[0]}


def _norms(singles) -> torch.Tensor:
    return torch.stack([torch.cat([g.flatten() for g in s.values()]).norm() for s in singles])


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    scale = torch.cat([w.flatten() for w in want.values()]).abs().max()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-5 * float(scale), msg=name)


@pytest.mark.parametrize("arch", TINY)
def test_ghost_step_equals_ew_and_single_image_clipping(arch, monkeypatch):
    singles = _single_image_grads(arch)
    norms = _norms(singles)
    routes = []
    real = norm_samplers.ghost_is_cheaper
    monkeypatch.setattr(norm_samplers, "ghost_is_cheaper", lambda *a: routes.append(real(*a)) or routes[-1])
    # 1e6: no image clipped; the median norm: the largest image clipped, the smallest not
    for clip in (1e6, float(norms.median())):
        want = _clipped_mean(singles, clip)
        ghost = _private_grads(arch, "ghost", clip)
        _assert_same(ghost, want)
        _assert_same(_private_grads(arch, "ew", clip), want)
    assert True in routes and False in routes  # both routes of the mixed norm sampler were taken


@pytest.mark.parametrize("arch", TINY)
def test_noise_is_one_draw_of_the_same_scale(arch):
    clip, sigma = 0.5, 2.0
    grads = {mode: _private_grads(arch, mode, clip, noise=sigma) for mode in dp.MODES}
    clean = _private_grads(arch, "ghost", clip)
    _assert_same(grads["ghost"], grads["ew"])  # the same seeded draw on the same clipped sum
    noise = torch.cat([(grads["ghost"][n] - clean[n]).flatten() for n in clean]) * BATCH
    assert noise.std().item() == pytest.approx(sigma * clip, rel=0.02)  # once: twice would read sqrt(2) x


def test_equivalence_fails_with_wrong_ghost_norms(monkeypatch):
    """Mutation: ghost norms off by 2x change which images are clipped and by how much; the check must see it."""
    arch = "pspnet_tiny"
    singles = _single_image_grads(arch)
    clip = float(_norms(singles).median())
    real = norm_samplers.weight_norms
    monkeypatch.setattr(norm_samplers, "weight_norms", lambda a, g: 2 * real(a, g))
    with pytest.raises(AssertionError):
        _assert_same(_private_grads(arch, "ghost", clip), _clipped_mean(singles, clip))


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("groups", [1, 4])
def test_conv_norms_match_per_sample_gradients_on_both_routes(ghost, groups, monkeypatch):
    monkeypatch.setattr(norm_samplers, "ghost_is_cheaper", lambda *a: ghost)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=groups)
    x, g = torch.randn(3, 8, 9, 11), torch.randn(3, 16, 5, 6)
    per_sample = compute_conv_grad_sample(conv, [x], g)
    got = norm_samplers.conv2d_norm_sample(conv, [x], g)
    for p in (conv.weight, conv.bias):
        torch.testing.assert_close(got[p], per_sample[p].flatten(1).norm(dim=1))


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("shape", [(3, 5), (3, 7, 5), (3, 2, 7, 5)])
def test_linear_norms_match_per_sample_gradients_on_both_routes(ghost, shape, monkeypatch):
    monkeypatch.setattr(norm_samplers, "ghost_is_cheaper", lambda *a: ghost)
    torch.manual_seed(0)
    linear = nn.Linear(5, 4)
    x, g = torch.randn(shape), torch.randn(*shape[:-1], 4)
    per_sample = compute_linear_grad_sample(linear, [x], g)
    got = norm_samplers.linear_norm_sample(linear, [x], g)
    for p in (linear.weight, linear.bias):
        torch.testing.assert_close(got[p], per_sample[p].flatten(1).norm(dim=1))


def test_ghost_is_chosen_where_it_costs_less():
    assert norm_samplers.ghost_is_cheaper(positions=64, fan_in=9 * 512, fan_out=512)  # a deep 3x3 conv
    assert not norm_samplers.ghost_is_cheaper(positions=128 * 256, fan_in=27, fan_out=64)  # the stem


@pytest.mark.parametrize("mode", dp.MODES)
def test_virtual_batches_take_the_unsplit_step(mode):
    """BatchMemoryManager's split of a Poisson batch of 2 into physical batches of 1 and 1 adds up to the step of
    the whole batch: the same clipped sum, one noise draw, one accountant step."""
    whole = _private_grads("pspnet_tiny", mode, 0.5, noise=1.0)
    module = _module("pspnet_tiny")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(BATCH)), batch_size=BATCH)
    private = dp.make_private(module.net, module.build_optimizer(), loader, max_grad_norm=0.5, delta=1e-5, epochs=1,
                              noise_multiplier=1.0, mode=mode, max_physical_batch_size=1)
    private.optimizer.generator = torch.Generator().manual_seed(7)
    module.use_private(private.net, private.optimizer)
    assert isinstance(private.loader.loader.batch_sampler, BatchSplittingSampler)
    images, labels = _batch()
    steps = []
    for part in BatchSplittingSampler(sampler=[list(range(BATCH))], max_batch_size=1, optimizer=private.optimizer):
        private.optimizer.zero_grad()
        private.loss(module.per_image_loss(module.outputs(images[part]), labels[part])).backward()
        steps.append((len(part), private.optimizer.pre_step()))
    assert steps == [(1, False), (1, True)]
    assert private.engine.accountant.history == [(1.0, 1.0, 1)]
    _assert_same({n: p.grad for n, p in module.plain_net.named_parameters()}, whole)


@pytest.mark.parametrize("arch", TINY)
def test_ghost_steps_under_bf16_autocast(arch):
    """CPU bf16 autocast stands in for the GPU's (unmeasured there): the ghost step runs and lands near the fp32
    step (bf16 activations: a few percent) and its norm stays within the clipping."""
    clip = 0.05  # below every image's norm: each one clipped, so the step's norm is bounded by the clipping
    module = _module(arch)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(BATCH)), batch_size=BATCH)
    private = dp.make_private(module.net, module.build_optimizer(), loader, max_grad_norm=clip, delta=1e-5, epochs=1,
                              noise_multiplier=0.0, mode="ghost")
    module.use_private(private.net, private.optimizer)
    images, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = private.loss(module.per_image_loss(module.outputs(images), labels))
    loss.backward()
    assert private.optimizer.pre_step()
    got = torch.cat([p.grad.flatten() for p in module.plain_net.parameters()])
    want = torch.cat([g.flatten() for g in _private_grads(arch, "ghost", clip).values()])
    assert got.isfinite().all() and got.norm() <= clip * 1.01
    assert (got - want).norm() / want.norm() < 0.2
