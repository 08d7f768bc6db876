"""The paper's patch attack: network shapes, stride, and learning a tiny synthetic problem."""

import time

import numpy as np
import pytest
import torch

from benchmark.attacks.network import AttackNet
from benchmark.attacks.patch_attack import (
    PatchAttackConfig,
    fit_patch_attack,
    random_crops,
    score_patch_attack,
)
from benchmark.errors import SegleakError
from benchmark.metrics import membership_metrics


@pytest.mark.parametrize("size", ["tiny", "paper"])
@pytest.mark.parametrize("rep", ["slm", "concat", "posterior"])
def test_attack_net_shapes_and_stride_8(size: str, rep: str) -> None:
    channels = {"slm": 1, "concat": 38, "posterior": 19}[rep]
    net = AttackNet(channels, size).eval()
    x = torch.randn(2, channels, 32, 48)
    with torch.no_grad():
        assert net(x).shape == (2, 2)
        assert net.body(x).shape[-2:] == (4, 6)


def test_attack_net_rejects_unknown_size() -> None:
    with pytest.raises(SegleakError):
        AttackNet(1, "huge")


def test_random_crops_are_windows_of_the_map() -> None:
    reps = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    idx = torch.tensor([1, 0, 1])
    crops = random_crops(reps, idx, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 3, 4, 4)
    for crop, i in zip(crops, idx, strict=True):
        top, left = divmod(int(crop[0, 0, 0] - reps[i, 0, 0, 0]), 12)
        assert torch.equal(crop, reps[i, :, top : top + 4, left : left + 4])
    assert random_crops(reps, idx, 99, torch.Generator()).shape == (3, 3, 10, 10)  # crop = min(crop, H, W)


def _slm_maps(n: int, member: bool, seed: int) -> torch.Tensor:
    """Exponential per-pixel losses; members have a lower mean (0.5 vs 0.8) like an overfit victim."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 1, 24, 24, generator=g)
    return -torch.log1p(-u) * (0.5 if member else 0.8)


def test_fit_patch_attack_learns_and_is_deterministic() -> None:
    cfg = PatchAttackConfig(
        crop=16, epochs=4, n_crops_train=4, n_crops_test=4, batch_size=32, accelerator="cpu"
    )
    start = time.perf_counter()
    net = fit_patch_attack(_slm_maps(40, True, 0), _slm_maps(24, False, 1), cfg)  # unbalanced groups
    elapsed = time.perf_counter() - start
    test = torch.cat([_slm_maps(30, True, 2), _slm_maps(30, False, 3)])
    member = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    scores = score_patch_attack(net, test, cfg, seed=0)
    assert scores.shape == (60,)
    auc = membership_metrics(scores, member, n_bootstrap=0)["auc"]
    assert auc > 0.9, auc
    assert elapsed < 60, elapsed  # ~3 s on an idle core; generous for a shared 2-core machine

    again = fit_patch_attack(_slm_maps(40, True, 0), _slm_maps(24, False, 1), cfg)
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(score_patch_attack(again, test, cfg, seed=0), scores)
    assert not np.array_equal(score_patch_attack(net, test, cfg, seed=1), scores)  # fresh test crops
